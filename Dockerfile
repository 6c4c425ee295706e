# Benmo's image, built from nothing that has to be pulled: the statically linked binaries that
# scripts/docker-build compiles on the host, in an empty root. Static glibc resolves node1..node5
# through the /etc/hosts and /etc/resolv.conf that Docker puts into every container.
FROM scratch
COPY benmo-node benmoctl /usr/local/bin/
ENV PATH=/usr/local/bin \
    BENMO_LISTEN=0.0.0.0:50051 \
    BENMO_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/benmo-node"]
HEALTHCHECK --interval=2s --timeout=3s --start-period=10s --retries=15 \
    CMD ["/usr/local/bin/benmoctl", "--cluster", "1=http://127.0.0.1:50051", "--rpc-timeout-ms", "1000", "status"]
