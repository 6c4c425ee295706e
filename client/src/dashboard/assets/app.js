// Benmo live dashboard — plain JS, no dependencies, nothing fetched from anywhere but this server.
//
// What the page shows: a ring of the N (3/5/7) Multi-Paxos nodes with every link (click to sever or
// heal) and animated dots for the messages flowing between them; the chain's tail; the balances;
// committed/s and latency over the last 5 minutes; the safety check; an event log; and an actions
// panel whose buttons run benmoctl commands on the server (the equivalent CLI line is shown).
//
// Data in — Server-Sent Events on GET /events, each a named event with JSON data:
//   hello    {nodes, cluster:[{id,address}], restart:"local"|"hint", restart_hint, genesis_balance,
//             stats:[...], log:[...]}              first on every (re)connect: resets the page
//   node     {id, up, role, leader, ballot:{round,node}, promised, quorum_connected, height, head,
//             pending, in_flight, cut_outgoing:[ids], cut_incoming:[ids], uptime_ms, unix_ms}
//            or {id, up:false, reason}             link a→b is cut if b ∈ a.cut_outgoing or a ∈ b.cut_incoming
//   messages {from, window_ms, counts:[{to, kind, count, failed}]}   ~every 100 ms per sender
//   chain    {height, node, blocks:[{height, hash, prev_hash, proposer, transfers:[...], transfer_count}]}
//   balances {node, height, balances:[...]}        index 0 is account 1
//   stats    {unix_ms, committed_per_s, latency_p50_ms, latency_p99_ms, leader, fault, height}  1/s
//   log      {unix_ms, node (0 = dashboard), level:"info"|"warn"|"action", text}
//   safety   {ok, unix_ms, checked:[{node,height,ok,problem}], agreed_height, total, expected, problems:[]}
// Actions out — POST JSON, answer {ok, command, output, error, hint}:
//   /api/transfer {from,to,amount} · /api/crash {node} · /api/restart {node} · /api/sever {a,b,one_way}
//   /api/heal {a,b} | {all:true} · /api/preset {name}
//
// Structure: one `state` object; SSE handlers only update it and mark what is dirty; one
// requestAnimationFrame loop renders dirty parts and moves the message dots (a fixed pool of SVG
// circles); the chart redraws at most twice a second. Server strings only ever go in via textContent.
'use strict';
(function () {
  // ---------------------------------------------------------------- constants
  const SVGNS = 'http://www.w3.org/2000/svg';
  const KINDS = [
    { key: 'prepare', label: 'Prepare', color: '#f59e0b' },
    { key: 'promise', label: 'Promise', color: '#facc15' },
    { key: 'accept', label: 'Accept', color: '#60a5fa' },
    { key: 'accepted', label: 'Accepted', color: '#22d3ee' },
    { key: 'decide', label: 'Decide', color: '#4ade80' },
    { key: 'nack', label: 'Nack', color: '#f87171' },
    { key: 'forward', label: 'Forward', color: '#c084fc' },
    { key: 'heartbeat', label: 'Heartbeat', color: '#8b97a8' },
    { key: 'fetch', label: 'Catch-up', color: '#fb923c' },
  ];
  const KIND_BY_KEY = Object.fromEntries(KINDS.map(k => [k.key, k]));
  const KIND_ALIAS = { heartbeat_reply: 'heartbeat', 'heartbeat-reply': 'heartbeat', catch_up: 'fetch', blocks: 'fetch' };
  const FAILED_COLOR = '#ef4444';
  const NODE_COLORS = ['#60a5fa', '#f472b6', '#34d399', '#fbbf24', '#a78bfa', '#fb7185', '#2dd4bf'];
  const RING = { cx: 310, cy: 282, r: 206, node: 27 };
  const MAX_DOTS = 60;
  const HEARTBEAT_DOT_LIMIT = 40;   // heartbeats only get a dot while fewer than this are in flight
  const FLOW_GAP_MS = 200;          // one dot per (from,to,kind) at most this often
  const LOG_MAX = 200;
  const ACTION_LOG_MAX = 30;
  const STATS_MAX = 330;
  const CHART_SPAN_MS = 5 * 60 * 1000;

  // ---------------------------------------------------------------- state
  const state = freshState();

  function freshState() {
    return {
      conn: 'connecting',
      ids: [],                  // node ids, sorted
      addresses: new Map(),     // id → address
      restart: 'local',
      restartHint: '',
      genesis: 100,
      nodes: new Map(),         // id → last node event
      leader: null,
      stats: [],                // stats events, oldest first
      safety: null,
      safetyAt: 0,
      chain: null,
      balances: null,
      msgHistory: [],           // {t, counts} for the rate strip (last ~1 s)
      flowLast: new Map(),      // "from-to-kind" → time of the last dot launched
      panelNode: null,          // node shown in #node-panel
      dirty: { nodes: new Set(), links: false, chain: false, balances: false, chart: false, rates: true },
    };
  }

  // DOM references and built pieces (rebuilt on hello).
  const ui = {
    nodeEls: new Map(),        // id → {g, body, ring, crown, x, role, stats, title}
    linkEls: new Map(),        // "a-b" → {g, base, half, full, hit, handle, glyph, title, titles, cut}
    pos: new Map(),            // id → {x, y}
    dots: [],                  // pool of {el, active, ...}
    chainCards: new Map(),     // "height:hash" → card element
    crashEls: new Map(),       // id → {crash, restart}
    balanceEls: [],            // [{row, bar, value}]
    rateEls: new Map(),        // kind → value span
  };

  const $ = id => document.getElementById(id);

  // ---------------------------------------------------------------- small helpers
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    setAttrs(e, attrs);
    for (const c of children) if (c != null) e.append(c);
    return e;
  }
  function svg(tag, attrs, ...children) {
    const e = document.createElementNS(SVGNS, tag);
    setAttrs(e, attrs);
    for (const c of children) if (c != null) e.append(c);
    return e;
  }
  function setAttrs(e, attrs) {
    if (!attrs) return;
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      if (k === 'text') e.textContent = v;
      else if (k === 'class') e.setAttribute('class', v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
  }
  function setAttr(e, name, value) {         // only touches the DOM when the value changes
    value = String(value);
    if (e.getAttribute(name) !== value) e.setAttribute(name, value);
  }
  function setText(e, text) {
    text = text == null ? '' : String(text);
    if (e.textContent !== text) e.textContent = text;
  }
  function num(v) { return typeof v === 'number' && isFinite(v) ? v : null; }
  function nodeColor(id) { return id > 0 ? NODE_COLORS[(id - 1) % NODE_COLORS.length] : '#94a3b8'; }
  function ballotText(b) { return b && b.round != null ? `${b.round}.${b.node}` : '–'; }
  function ballotCmp(a, b) {
    if (!a) return b ? -1 : 0;
    if (!b) return 1;
    return (a.round - b.round) || (a.node - b.node);
  }
  function ballotHue(b) { return Math.round(((b.round * 7 + b.node * 3) * 137.508) % 360); }
  function isUp(n) { return !!(n && n.up); }
  function fmtTime(ms) {
    if (!ms) return '--:--:--';
    const d = new Date(ms);
    const p = (v, w = 2) => String(v).padStart(w, '0');
    return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
  }
  function fmtDuration(ms) {
    if (num(ms) == null) return '–';
    const s = Math.floor(ms / 1000);
    if (s < 60) return `${(ms / 1000).toFixed(1)} s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
    return `${Math.floor(s / 3600)}h ${Math.floor(s / 60) % 60}m`;
  }
  function fmtRate(v) {
    if (v >= 10000) return `${(v / 1000).toFixed(0)}k`;
    if (v >= 1000) return `${(v / 1000).toFixed(1)}k`;
    return String(Math.round(v));
  }
  function fmtMs(v) { return num(v) == null ? '–' : v < 10 ? v.toFixed(1) : String(Math.round(v)); }
  function restartHintFor(id) {
    return state.restartHint ? state.restartHint.split('{node}').join(String(id)) : `start node ${id}`;
  }
  function compactJSON(v, max = 180) {
    if (v == null) return '';
    let s = typeof v === 'string' ? v : JSON.stringify(v);
    if (s.length > max) s = s.slice(0, max - 1) + '…';
    return s;
  }

  // ---------------------------------------------------------------- SSE
  function connect() {
    const es = new EventSource('/events');
    es.onopen = () => setConnection('live');
    es.onerror = () => {
      setConnection('reconnecting');
      if (es.readyState === EventSource.CLOSED) {   // the browser gave up (bad answer): retry ourselves
        es.close();
        setTimeout(connect, 2000);
      }
    };
    const handlers = { hello: onHello, node: onNode, messages: onMessages, chain: onChain,
      balances: onBalances, stats: onStats, log: onLog, safety: onSafety };
    for (const [name, fn] of Object.entries(handlers)) {
      es.addEventListener(name, ev => {
        let data;
        try { data = JSON.parse(ev.data); } catch (e) { console.warn('bad JSON in', name, e); return; }
        try { fn(data); } catch (e) { console.error('handling', name, e); }
      });
    }
  }

  function setConnection(s) {
    state.conn = s;
    const badge = $('connection');
    setAttr(badge, 'data-state', s === 'live' ? 'live' : 'reconnecting');
    setText(badge.querySelector('.label'), s === 'live' ? 'live' : s === 'connecting' ? 'connecting…' : 'reconnecting…');
  }

  // ---------------------------------------------------------------- event handlers
  function onHello(h) {
    const keepConn = state.conn;
    Object.assign(state, freshState());
    state.conn = keepConn;
    const cluster = Array.isArray(h.cluster) ? h.cluster : [];
    let ids = cluster.map(c => Number(c.id)).filter(n => n > 0);
    if (!ids.length) for (let i = 1; i <= (Number(h.nodes) || 0); i++) ids.push(i);
    state.ids = [...new Set(ids)].sort((a, b) => a - b);
    for (const c of cluster) state.addresses.set(Number(c.id), String(c.address || ''));
    state.restart = h.restart === 'hint' ? 'hint' : 'local';
    state.restartHint = typeof h.restart_hint === 'string' ? h.restart_hint : '';
    state.genesis = num(h.genesis_balance) ?? 100;
    state.stats = (Array.isArray(h.stats) ? h.stats : []).slice(-STATS_MAX);
    setConnection('live');

    buildRing();
    buildCrashRow();
    buildBalances();
    buildRates();
    resetChain();
    renderSafety();
    closePanel();
    resetLog(Array.isArray(h.log) ? h.log : []);
    renderHeaderStats();
    configureForm();
    setText($('cluster-size'), `${state.ids.length} nodes`);
    $('ring-empty').hidden = state.ids.length > 0;
    state.dirty.chart = true;
  }

  function onNode(n) {
    const id = Number(n.id);
    if (!ui.nodeEls.has(id)) return;
    state.nodes.set(id, n);
    state.dirty.nodes.add(id);
    state.dirty.links = true;
  }

  function onMessages(m) {
    const from = Number(m.from);
    const counts = Array.isArray(m.counts) ? m.counts : [];
    const now = performance.now();
    state.msgHistory.push({ t: now, counts });
    pruneHistory(now);
    for (const c of counts) {
      const count = Number(c.count) || 0;
      if (count <= 0) continue;
      const failed = Number(c.failed) || 0;
      launchDot(from, Number(c.to), kindKey(c.kind), count, failed * 2 > count, now);
    }
  }

  function onChain(c) { state.chain = c; state.dirty.chain = true; }
  function onBalances(b) { state.balances = b; state.dirty.balances = true; }

  function onStats(s) {
    state.stats.push(s);
    if (state.stats.length > STATS_MAX) state.stats.splice(0, state.stats.length - STATS_MAX);
    state.dirty.chart = true;
    renderHeaderStats();
    if (!state.nodes.size) renderLeader();
  }

  function onLog(entry) { addLogLine(entry, true); }

  function onSafety(s) { state.safety = s; state.safetyAt = Date.now(); renderSafety(); }

  // ---------------------------------------------------------------- ring: build
  function nodePosition(index, count) {
    const a = -Math.PI / 2 + (2 * Math.PI * index) / count;
    return { x: RING.cx + RING.r * Math.cos(a), y: RING.cy + RING.r * Math.sin(a) };
  }

  function buildRing() {
    const links = $('links-layer'), dots = $('dots-layer'), handles = $('handles-layer'), nodes = $('nodes-layer');
    for (const layer of [links, dots, handles, nodes]) layer.replaceChildren();
    ui.nodeEls.clear(); ui.linkEls.clear(); ui.pos.clear(); ui.dots = [];
    const ids = state.ids;
    ids.forEach((id, i) => ui.pos.set(id, nodePosition(i, ids.length)));
    fitViewBox();

    for (let i = 0; i < ids.length; i++) {
      for (let j = i + 1; j < ids.length; j++) {
        const l = buildLink(ids[i], ids[j]);
        links.append(l.g);
        handles.append(l.handle);
      }
    }
    // handles sit above every line and dot so the centre of each link is always clickable
    for (let i = 0; i < MAX_DOTS; i++) {
      const c = svg('circle', { r: 3, display: 'none', class: 'dot' });
      dots.append(c);
      ui.dots.push({ el: c, active: false });
    }
    for (const id of ids) nodes.append(buildNode(id));
    state.dirty.links = true;
  }

  // Tight viewBox around the nodes, their crowns and labels, so 3 nodes fill the space as well as 7.
  function fitViewBox() {
    const ps = [...ui.pos.values()];
    if (!ps.length) return;
    const xs = ps.map(p => p.x), ys = ps.map(p => p.y);
    const x0 = Math.min(...xs) - 84, x1 = Math.max(...xs) + 84;
    const y0 = Math.min(...ys) - 56, y1 = Math.max(...ys) + 68;
    $('ring').setAttribute('viewBox', `${x0.toFixed(0)} ${y0.toFixed(0)} ${(x1 - x0).toFixed(0)} ${(y1 - y0).toFixed(0)}`);
  }

  function buildLink(a, b) {
    const p = ui.pos.get(a), q = ui.pos.get(b);
    const key = `${a}-${b}`;
    const mx = (p.x + q.x) / 2, my = (p.y + q.y) / 2;
    const angle = Math.atan2(q.y - p.y, q.x - p.x) * 180 / Math.PI;
    const line = (cls, x1, y1, x2, y2) => svg('line', { class: cls, x1, y1, x2, y2 });
    const title = svg('title');
    const base = line('base', p.x, p.y, q.x, q.y);
    const full = line('cut-full', p.x, p.y, q.x, q.y);
    const half = line('cut-half', p.x, p.y, mx, my);
    const hit = line('hit', p.x, p.y, q.x, q.y);
    const g = svg('g', { class: 'link', 'data-pair': key }, title, base, full, half, hit);
    const glyph = svg('g', { class: 'glyph', transform: `rotate(${angle.toFixed(1)})` },
      svg('circle', { class: 'knob', r: 3.2 }),
      svg('circle', { class: 'badge', r: 8.5 }),
      svg('path', { class: 'x', d: 'M-3.6,-3.6L3.6,3.6M3.6,-3.6L-3.6,3.6' }),
      svg('path', { class: 'arrow', d: 'M-7,-5.5L2,0L-7,5.5Z' }),
      svg('path', { class: 'bar', d: 'M5,-7L5,7' }));
    const handleTitle = svg('title');
    const handle = svg('g', { class: 'handle', 'data-link': key, 'data-cut': 'none',
      transform: `translate(${mx.toFixed(1)},${my.toFixed(1)})` },
      handleTitle, svg('circle', { class: 'handle-hit', r: 12 }), glyph);
    const l = { a, b, g, base, full, half, hit, handle, glyph, titles: [title, handleTitle], cut: null, p, q, mx, my };
    const click = ev => onLinkClick(l, ev);
    g.addEventListener('click', click);
    handle.addEventListener('click', click);
    ui.linkEls.set(key, l);
    return l;
  }

  function buildNode(id) {
    const p = ui.pos.get(id);
    const r = RING.node;
    const title = svg('title');
    const parts = {
      hit: svg('rect', { class: 'node-hit', x: -58, y: -r - 20, width: 116, height: 2 * r + 56, rx: 10 }),
      ring: svg('circle', { class: 'leader-ring', r: r + 6 }),
      body: svg('circle', { class: 'body', r }),
      crown: svg('path', { class: 'crown', d: `M-12,${-r - 5}L-14,${-r - 19}L-6,${-r - 12}L0,${-r - 21}L6,${-r - 12}L14,${-r - 19}L12,${-r - 5}Z` }),
      idText: svg('text', { class: 'node-id', y: 1, text: String(id) }),
      x: svg('path', { class: 'down-x', d: `M-14,-14L14,14M14,-14L-14,14` }),
      role: svg('text', { class: 'node-role', y: r + 17 }),
      stats: svg('text', { class: 'node-stats', y: r + 31 }),
    };
    const g = svg('g', { class: 'node', 'data-node': id, 'data-role': 'unknown', 'data-up': 'false',
      transform: `translate(${p.x.toFixed(1)},${p.y.toFixed(1)})`, tabindex: 0 },
      title, parts.hit, parts.ring, parts.body, parts.crown, parts.idText, parts.x, parts.role, parts.stats);
    g.addEventListener('click', ev => { ev.stopPropagation(); togglePanel(id); });
    g.addEventListener('keydown', ev => { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); togglePanel(id); } });
    ui.nodeEls.set(id, Object.assign({ g, title }, parts));
    renderNode(id);
    return g;
  }

  // ---------------------------------------------------------------- ring: render
  function renderDirty() {
    const d = state.dirty;
    if (d.nodes.size) {
      for (const id of d.nodes) renderNode(id);
      d.nodes.clear();
      renderLeader();
      renderCrashRow();
      if (state.panelNode != null) renderPanel();
    }
    if (d.links) { d.links = false; for (const l of ui.linkEls.values()) renderLink(l); }
    if (d.chain) { d.chain = false; renderChain(); }
    if (d.balances) { d.balances = false; renderBalances(); }
  }

  function roleOf(n) {
    if (!n) return 'unknown';
    if (!n.up) return 'down';
    return ['leader', 'candidate', 'follower'].includes(n.role) ? n.role : 'unknown';
  }

  function renderNode(id) {
    const e = ui.nodeEls.get(id);
    const n = state.nodes.get(id);
    const role = roleOf(n);
    setAttr(e.g, 'data-role', role);
    setAttr(e.g, 'data-up', isUp(n) ? 'true' : 'false');
    e.g.classList.toggle('no-quorum', isUp(n) && n.quorum_connected === false);
    // Colour = the ballot the node has promised (a follower's is its leader's), so a node that
    // joined a new leader's Phase 1 changes colour with it.
    const colourBallot = n && (n.promised || n.ballot);
    if (isUp(n) && colourBallot && colourBallot.round != null) {
      const h = ballotHue(colourBallot);
      e.body.style.fill = `hsl(${h} 55% 38%)`;
      e.body.style.stroke = `hsl(${h} 75% 66%)`;
    } else {
      e.body.style.fill = '';
      e.body.style.stroke = '';
    }
    if (!n) { setText(e.role, 'no data'); setText(e.stats, ''); }
    else if (!n.up) {
      setText(e.role, 'down');
      setText(e.stats, state.restart === 'hint' ? 'click for the restart hint' : 'click to restart');
    } else {
      let roleLine = role === 'follower' && n.leader != null ? `follower of ${n.leader}` : role;
      if (n.quorum_connected === false) roleLine += ' · no quorum';
      setText(e.role, roleLine);
      setText(e.stats, `b ${ballotText(n.promised || n.ballot)} · h ${n.height ?? '–'} · p ${n.pending ?? 0}`);
    }
    setText(e.title, nodeTooltip(id, n));
  }

  function nodeTooltip(id, n) {
    if (!n) return `node ${id}: no data yet`;
    if (!n.up) {
      const hint = state.restart === 'hint' ? `\nrun: ${restartHintFor(id)}` : '';
      return `node ${id} is down: ${n.reason || 'unreachable'}${hint}`;
    }
    return `node ${id} · ${n.role} · ballot ${ballotText(n.ballot)} · promised ${ballotText(n.promised)}\n` +
      `height ${n.height} · head ${n.head || '–'} · pending ${n.pending} · in flight ${n.in_flight}\nclick for details`;
  }

  function cutState(a, b) {
    const A = state.nodes.get(a), B = state.nodes.get(b);
    const has = (list, x) => Array.isArray(list) && list.includes(x);
    const ab = (isUp(A) && has(A.cut_outgoing, b)) || (isUp(B) && has(B.cut_incoming, a));
    const ba = (isUp(B) && has(B.cut_outgoing, a)) || (isUp(A) && has(A.cut_incoming, b));
    return ab && ba ? 'both' : ab ? 'a-to-b' : ba ? 'b-to-a' : 'none';
  }

  function renderLink(l) {
    const cut = cutState(l.a, l.b);
    const peerDown = [l.a, l.b].some(id => state.nodes.has(id) && !isUp(state.nodes.get(id)));
    l.g.classList.toggle('peer-down', peerDown);
    if (cut === l.cut) return;
    l.cut = cut;
    setAttr(l.handle, 'data-cut', cut);
    setAttr(l.g, 'data-cut-state', cut);
    // a one-way cut: red half on the sender's side, arrow + bar at the middle pointing to the receiver
    const sender = cut === 'b-to-a' ? l.q : l.p;
    setAttr(l.half, 'x1', sender.x.toFixed(1));
    setAttr(l.half, 'y1', sender.y.toFixed(1));
    const rot = Math.atan2(l.q.y - l.p.y, l.q.x - l.p.x) * 180 / Math.PI + (cut === 'b-to-a' ? 180 : 0);
    setAttr(l.glyph, 'transform', `rotate(${rot.toFixed(1)})`);
    const { a, b } = l;
    const text = {
      none: `${a} ⇄ ${b} open\nclick: sever both ways · shift-click: cut ${a} → ${b} only · alt-click: cut ${b} → ${a} only`,
      both: `${a} → ${b} cut; ${b} → ${a} cut\nclick to heal`,
      'a-to-b': `${a} → ${b} cut; ${b} → ${a} open\nclick to heal`,
      'b-to-a': `${b} → ${a} cut; ${a} → ${b} open\nclick to heal`,
    }[cut];
    for (const t of l.titles) setText(t, text);
  }

  function onLinkClick(l, ev) {
    ev.stopPropagation();
    const cut = l.cut || 'none';
    if (cut !== 'none') { api('/api/heal', { a: l.a, b: l.b }); return; }
    if (ev.shiftKey) api('/api/sever', { a: l.a, b: l.b, one_way: true });
    else if (ev.altKey) api('/api/sever', { a: l.b, b: l.a, one_way: true });
    else api('/api/sever', { a: l.a, b: l.b, one_way: false });
  }

  function renderLeader() {
    let best = null;
    for (const [id, n] of state.nodes) {
      if (isUp(n) && n.role === 'leader' && (!best || ballotCmp(n.ballot, best.n.ballot) > 0)) best = { id, n };
    }
    let leader = best ? best.id : null;
    if (!state.nodes.size && state.stats.length) leader = num(state.stats[state.stats.length - 1].leader);
    state.leader = leader;
    const e = $('leader');
    setAttr(e, 'data-leader', leader == null ? '' : leader);
    setText(e, leader == null ? 'no leader' : `leader ${leader}`);
    e.classList.toggle('none', leader == null);
    for (const [id, ne] of ui.nodeEls) ne.g.classList.toggle('is-leader', id === leader);
  }

  // ---------------------------------------------------------------- message dots
  function kindKey(kind) {
    const k = String(kind || '').toLowerCase();
    return KIND_BY_KEY[k] ? k : KIND_ALIAS[k] || 'other';
  }

  function launchDot(from, to, kind, count, failed, now) {
    const p = ui.pos.get(from), q = ui.pos.get(to);
    if (!p || !q || from === to) return;
    const flow = `${from}-${to}-${kind}`;
    const last = state.flowLast.get(flow);
    if (last != null && now - last < FLOW_GAP_MS) return;
    let active = 0, free = null;
    for (const d of ui.dots) { if (d.active) active++; else if (!free) free = d; }
    const heartbeat = kind === 'heartbeat';
    if (!free || (heartbeat && active >= HEARTBEAT_DOT_LIMIT)) return;
    state.flowLast.set(flow, now);
    // lane: offset to the right of the direction of travel so the two directions do not overlap
    const dx = q.x - p.x, dy = q.y - p.y, len = Math.hypot(dx, dy) || 1;
    const ux = dx / len, uy = dy / len, off = 3.5, edge = RING.node + 2;
    Object.assign(free, {
      active: true, failed, t0: now, heartbeat,
      x0: p.x + ux * edge - uy * off, y0: p.y + uy * edge + ux * off,
      x1: q.x - ux * edge - uy * off, y1: q.y - uy * edge + ux * off,
      dur: 260 + len * 1.15,
      r: heartbeat ? 2.2 : Math.min(8, 2.6 + 1.5 * Math.log10(1 + count)),
    });
    const c = free.el;
    c.setAttribute('fill', KIND_BY_KEY[kind] ? KIND_BY_KEY[kind].color : '#cbd5e1');
    c.setAttribute('r', free.r.toFixed(1));
    c.setAttribute('class', heartbeat ? 'dot hb' : 'dot');
    c.setAttribute('cx', free.x0.toFixed(1));
    c.setAttribute('cy', free.y0.toFixed(1));
    c.removeAttribute('display');
  }

  function animateDots(now) {
    const FADE = 380;
    for (const d of ui.dots) {
      if (!d.active) continue;
      const c = d.el;
      let t = (now - d.t0) / d.dur;
      if (d.failed) {
        // travel to the middle of the link, then burst red and fade out there
        const travel = Math.min(1, t * 2);
        const fadeT = (now - d.t0 - d.dur / 2) / FADE;
        if (fadeT >= 1) { release(d); continue; }
        const k = travel * 0.5;
        c.setAttribute('cx', (d.x0 + (d.x1 - d.x0) * k).toFixed(1));
        c.setAttribute('cy', (d.y0 + (d.y1 - d.y0) * k).toFixed(1));
        if (fadeT > 0) {
          c.setAttribute('fill', FAILED_COLOR);
          c.setAttribute('r', (d.r + 5 * fadeT).toFixed(1));
          c.setAttribute('opacity', (1 - fadeT).toFixed(2));
        } else c.setAttribute('opacity', '1');
        continue;
      }
      if (t >= 1) { release(d); continue; }
      const e = t < 0.5 ? 2 * t * t : 1 - Math.pow(-2 * t + 2, 2) / 2;   // ease in-out
      c.setAttribute('cx', (d.x0 + (d.x1 - d.x0) * e).toFixed(1));
      c.setAttribute('cy', (d.y0 + (d.y1 - d.y0) * e).toFixed(1));
      const alpha = Math.min(1, t * 6, (1 - t) * 6) * (d.heartbeat ? 0.5 : 1);
      c.setAttribute('opacity', alpha.toFixed(2));
    }
  }

  function release(d) {
    d.active = false;
    d.el.setAttribute('display', 'none');
  }

  function pruneHistory(now) {
    const h = state.msgHistory;
    let i = 0;
    while (i < h.length && now - h[i].t > 1000) i++;
    if (i) h.splice(0, i);
    if (state.flowLast.size > 2000) state.flowLast.clear();
  }

  // ---------------------------------------------------------------- rate strip
  function buildRates() {
    const strip = $('rates');
    strip.replaceChildren();
    ui.rateEls.clear();
    const chip = (key, label, color) => {
      const v = el('b', { text: '0' });
      ui.rateEls.set(key, v);
      const c = el('span', { class: `chip k-${key}`, title: `${label} messages per second (last second, all links)` },
        el('i', { class: 'sw', style: `background:${color}` }), el('span', { text: label }), v);
      strip.append(c);
    };
    for (const k of KINDS) chip(k.key, k.label, k.color);
    chip('failed', 'undelivered', FAILED_COLOR);
    chip('total', 'total /s', 'transparent');
  }

  function renderRates() {
    pruneHistory(performance.now());
    const sums = { failed: 0, total: 0 };
    for (const k of KINDS) sums[k.key] = 0;
    for (const h of state.msgHistory) {
      for (const c of h.counts) {
        const n = Number(c.count) || 0;
        const k = kindKey(c.kind);
        if (k in sums) sums[k] += n;
        sums.total += n;
        sums.failed += Number(c.failed) || 0;
      }
    }
    for (const [k, e] of ui.rateEls) {
      setText(e, fmtRate(sums[k] || 0));
      e.parentElement.classList.toggle('zero', !sums[k]);
    }
  }

  // ---------------------------------------------------------------- node panel
  function togglePanel(id) {
    if (state.panelNode === id && !$('node-panel').hidden) closePanel();
    else { state.panelNode = id; renderPanel(); }
  }

  function closePanel() {
    state.panelNode = null;
    const p = $('node-panel');
    p.hidden = true;
    setAttr(p, 'data-node', '');
    for (const e of ui.nodeEls.values()) e.g.classList.remove('selected');
  }

  function renderPanel() {
    const id = state.panelNode;
    const p = $('node-panel');
    if (id == null || !ui.nodeEls.has(id)) { closePanel(); return; }
    const n = state.nodes.get(id);
    p.hidden = false;
    setAttr(p, 'data-node', id);
    for (const [nid, e] of ui.nodeEls) e.g.classList.toggle('selected', nid === id);
    setText(p.querySelector('.np-title'), `node ${id}`);
    const roleEl = p.querySelector('.np-role');
    setText(roleEl, roleOf(n));
    setAttr(roleEl, 'data-role', roleOf(n));
    setText(p.querySelector('.np-address'), state.addresses.get(id) || '');
    const rows = [];
    if (!n) rows.push(['state', 'no data yet']);
    else if (!n.up) rows.push(['reason', n.reason || 'unreachable']);
    else {
      const list = l => (Array.isArray(l) && l.length ? l.join(', ') : 'none');
      rows.push(['ballot', ballotText(n.ballot)], ['promised', ballotText(n.promised)],
        ['leader', n.leader == null ? '–' : n.leader], ['quorum', n.quorum_connected ? 'yes' : 'NO'],
        ['height', n.height ?? '–'], ['head', n.head || '–'], ['pending', n.pending ?? '–'],
        ['in flight', n.in_flight ?? '–'], ['sends nothing to', list(n.cut_outgoing)],
        ['takes nothing from', list(n.cut_incoming)], ['uptime', fmtDuration(n.uptime_ms)]);
    }
    const dl = p.querySelector('.np-details');
    dl.replaceChildren(...rows.map(([k, v]) => el('div', { class: 'kv' }, el('dt', { text: k }), el('dd', { text: String(v) }))));
    const hint = p.querySelector('.np-hint');
    const showHint = n && !n.up && state.restart === 'hint';
    hint.hidden = !showHint;
    if (showHint) setText(hint, `run: ${restartHintFor(id)}`);
    p.querySelector('[data-action="restart"]').disabled = !(n && !n.up);
    p.querySelector('[data-action="crash"]').disabled = false;
  }

  function wirePanel() {
    const p = $('node-panel');
    p.querySelector('.np-close').addEventListener('click', closePanel);
    p.querySelector('[data-action="crash"]').addEventListener('click', () => {
      if (state.panelNode != null) api('/api/crash', { node: state.panelNode });
    });
    p.querySelector('[data-action="restart"]').addEventListener('click', () => {
      if (state.panelNode != null) api('/api/restart', { node: state.panelNode });
    });
    document.addEventListener('keydown', ev => { if (ev.key === 'Escape') closePanel(); });
  }

  // ---------------------------------------------------------------- actions
  async function api(path, body) {
    const entry = addActionEntry(path, body);
    let res;
    try {
      const r = await fetch(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      const text = await r.text();
      try { res = JSON.parse(text); } catch (e) { res = { ok: false, error: `HTTP ${r.status}: ${text.slice(0, 200)}` }; }
      if (!res || typeof res !== 'object') res = { ok: false, error: `unexpected answer: ${compactJSON(res)}` };
    } catch (e) {
      res = { ok: false, error: `request failed: ${e.message}` };
    }
    finishActionEntry(entry, res);
    return res;
  }

  function addActionEntry(path, body) {
    const list = $('action-log');
    const cmd = el('code', { class: 'cmd', text: `POST ${path} ${JSON.stringify(body)}` });
    const result = el('div', { class: 'result', text: '…' });
    const li = el('li', { class: 'pending' }, el('span', { class: 'time', text: fmtTime(Date.now()).slice(0, 8) }), cmd, result);
    list.prepend(li);
    while (list.children.length > ACTION_LOG_MAX) list.lastElementChild.remove();
    return { li, cmd, result };
  }

  function finishActionEntry(entry, res) {
    entry.li.classList.remove('pending');
    entry.li.classList.add(res.ok ? 'ok' : 'err');
    if (res.command) setText(entry.cmd, `$ ${res.command}`);
    entry.result.replaceChildren();
    if (res.ok) entry.result.append(el('span', { class: 'okmark', text: 'ok' }), res.output != null ? ` ${compactJSON(res.output)}` : '');
    else entry.result.append(el('span', { class: 'errmark', text: 'error' }), ` ${res.error || 'failed'}`);
    if (res.hint) entry.result.append(el('div', { class: 'hint-box' }, 'run: ', el('code', { text: res.hint })));
  }

  function buildCrashRow() {
    const box = $('crash-buttons');
    box.replaceChildren();
    ui.crashEls.clear();
    for (const id of state.ids) {
      const crash = el('button', { type: 'button', 'data-action': 'crash-node', 'data-node': id, class: 'danger small',
        title: `crash node ${id} (benmoctl crash ${id})`, text: String(id) });
      const restart = el('button', { type: 'button', 'data-action': 'restart-node', 'data-node': id, class: 'small restart',
        title: `restart node ${id}`, text: `↻ restart ${id}`, hidden: true });
      crash.addEventListener('click', () => api('/api/crash', { node: id }));
      restart.addEventListener('click', () => api('/api/restart', { node: id }));
      box.append(crash);
      ui.crashEls.set(id, { crash, restart });
    }
    for (const e of ui.crashEls.values()) box.append(e.restart);   // restart buttons after all crash buttons
    renderCrashRow();
  }

  function renderCrashRow() {
    const hints = [];
    for (const [id, e] of ui.crashEls) {
      const n = state.nodes.get(id);
      const down = !!(n && !n.up);
      e.restart.hidden = !down;
      e.crash.classList.toggle('is-down', down);
      if (down && state.restart === 'hint') hints.push(`node ${id} is down — run: ${restartHintFor(id)}`);
    }
    const box = $('restart-hints');
    setText(box, hints.length === 1 ? hints[0] : `${hints.length} nodes down — run: ${hints.map(h => h.split('run: ')[1]).join(' ; ')}`);
    box.title = hints.join('\n');
    box.hidden = !hints.length;
  }

  function wireActions() {
    $('transfer-form').addEventListener('submit', ev => { ev.preventDefault(); sendTransfer(); });
    $('heal-all').addEventListener('click', () => api('/api/heal', { all: true }));
    for (const b of document.querySelectorAll('[data-preset]')) {
      b.addEventListener('click', () => api('/api/preset', { name: b.getAttribute('data-preset') }));
    }
  }

  function configureForm() {
    const n = state.ids.length ? Math.max(...state.ids) : 7;
    for (const id of ['transfer-from', 'transfer-to']) $(id).max = n;
    const chained = document.querySelector('[data-preset="chained"]');
    const ok = !state.ids.length || state.ids.length === 3 || state.ids.length === 5;
    chained.disabled = !ok;
    chained.title = ok ? 'a line of nodes, leader at one end' : 'only for 3 or 5 nodes';
  }

  async function sendTransfer() {
    const vals = ['transfer-from', 'transfer-to', 'transfer-amount'].map(id => $(id).value.trim());
    const [from, to, amount] = vals.map(Number);
    if (vals.some(v => v === '') || [from, to, amount].some(v => !Number.isInteger(v))) {
      showTransfer('failed', 'fill in from, to and amount as whole numbers');
      return;
    }
    showTransfer('pending', `sending ${from} → ${to}, ${amount}…`);
    $('transfer-send').disabled = true;
    try {
      const res = await api('/api/transfer', { from, to, amount });
      describeTransfer(res);
    } finally {
      $('transfer-send').disabled = false;
    }
  }

  function describeTransfer(res) {
    if (!res.ok) {
      showTransfer('failed', `failed: ${res.error || 'unknown error'}${res.hint ? ` — run: ${res.hint}` : ''}`);
      return;
    }
    const out = res.output && typeof res.output === 'object' ? res.output : {};
    const height = out.height ?? out.block_height ?? out.committed_height ?? null;
    const outcome = out.outcome && typeof out.outcome === 'object' ? out.outcome : {};
    const status = outcome.status || out.status || null;
    const at = height != null ? ` at height ${height}` : '';
    if (out.pending || out.committed === false) {
      showTransfer('pending', `not committed yet: still pending${out.node != null ? ` at node ${out.node}` : ''}`);
    } else if (status === 'rejected') {
      showTransfer('rejected', `rejected${at}: ${outcome.reason || out.reason || 'no reason given'}`);
    } else if (status === 'duplicate') {
      const first = outcome.first_height != null ? ` (a duplicate: first applied at height ${outcome.first_height})` : ' (a duplicate)';
      showTransfer('committed', `committed${at}${first}`);
    } else {
      showTransfer('committed', `committed${at}${status && status !== 'applied' ? ` (${status})` : ' · applied'}`);
    }
  }

  function showTransfer(s, text) {
    const e = $('transfer-result');
    setAttr(e, 'data-state', s);
    setText(e, text);
  }

  // ---------------------------------------------------------------- chain tail
  function resetChain() {
    ui.chainCards.clear();
    $('chain').replaceChildren(el('div', { class: 'empty', text: 'no blocks yet' }));
    setText($('chain-src'), '');
  }

  function renderChain() {
    const c = state.chain;
    const blocks = c && Array.isArray(c.blocks) ? c.blocks.slice().sort((x, y) => y.height - x.height) : [];
    setText($('chain-src'), c ? `node ${c.node}'s view · height ${c.height}` : '');
    const box = $('chain');
    if (!blocks.length) { resetChain(); return; }
    const keep = new Map();
    const items = [];
    blocks.forEach((b, i) => {
      const key = `${b.height}:${b.hash}`;
      let card = ui.chainCards.get(key);
      if (!card) { card = buildBlockCard(b); card.classList.add('fresh'); }
      else card.classList.remove('fresh');
      keep.set(key, card);
      items.push(card);
      const below = blocks[i + 1];
      if (below) items.push(buildConnector(b, below));
    });
    ui.chainCards = keep;
    box.replaceChildren(...items);
  }

  function buildBlockCard(b) {
    const transfers = Array.isArray(b.transfers) ? b.transfers : [];
    const count = num(b.transfer_count) ?? transfers.length;
    const head = el('div', { class: 'bhead' },
      el('b', { class: 'bheight', text: `#${b.height}` }),
      el('code', { class: 'bhash', title: 'block hash', text: String(b.hash || '') }),
      el('span', { class: 'proposer', style: `color:${nodeColor(Number(b.proposer))}`, text: `by n${b.proposer}` }),
      el('span', { class: 'bcount', text: `${count} tx` }));
    const list = el('div', { class: 'txs' });
    for (const t of transfers) list.append(buildTransferRow(t));
    if (count > transfers.length) list.append(el('div', { class: 'more', text: `+${count - transfers.length} more` }));
    if (!count) list.append(el('div', { class: 'more', text: 'no transfers' }));
    const prev = el('div', { class: 'bprev', title: 'this block commits to the previous block\'s hash' },
      '← prev ', el('code', { text: String(b.prev_hash || '') }));
    return el('div', { class: 'block', 'data-height': b.height }, head, list, prev);
  }

  function buildTransferRow(t) {
    const o = t.outcome && typeof t.outcome === 'object' ? t.outcome : {};
    const status = ['applied', 'rejected', 'duplicate'].includes(o.status) ? o.status : 'unknown';
    let word = status, tip = `transfer ${t.id}: ${status}`;
    if (status === 'rejected') { word = 'rejected'; tip = `rejected: ${o.reason || 'no reason given'}`; }
    if (status === 'duplicate') { word = o.first_height != null ? `dup @${o.first_height}` : 'duplicate'; tip = `duplicate of a transfer first applied at height ${o.first_height}`; }
    return el('div', { class: `tx s-${status}`, 'data-transfer-id': String(t.id), title: tip },
      el('code', { class: 'tid', text: String(t.id) }),
      el('span', { class: 'tdir', text: `${t.from}→${t.to}` }),
      el('span', { class: 'tamt', text: String(t.amount) }),
      el('span', { class: 'tout', text: word }));
  }

  function buildConnector(upper, lower) {
    const contiguous = upper.height === lower.height + 1;
    const matches = contiguous && upper.prev_hash === lower.hash;
    const cls = matches ? 'ok' : contiguous ? 'bad' : 'gap';
    const text = matches ? `prev ${upper.prev_hash} = hash of #${lower.height}` :
      contiguous ? `prev ${upper.prev_hash} ≠ ${lower.hash}!` : `… ${upper.height - lower.height - 1} blocks not shown`;
    return el('div', { class: `connector ${cls}` }, el('span', { class: 'chainlink', text: matches ? '↑' : contiguous ? '✕' : '⋮' }), el('span', { text }));
  }

  // ---------------------------------------------------------------- balances
  function buildBalances() {
    const box = $('balances');
    box.replaceChildren();
    ui.balanceEls = [];
    state.ids.forEach((id, i) => {
      const bar = el('span', { class: 'bar', style: `background:${nodeColor(id)}` });
      const value = el('b', { class: 'val', text: '–' });
      const row = el('div', { class: 'brow' }, el('span', { class: 'acct', text: `acct ${id}` }),
        el('span', { class: 'track' }, bar), value);
      box.append(row);
      ui.balanceEls[i] = { bar, value };
    });
    setText($('balances-sum'), '');
    setText($('balances-src'), '');
  }

  function renderBalances() {
    const b = state.balances;
    const vals = b && Array.isArray(b.balances) ? b.balances.map(Number) : [];
    const scale = Math.max(state.genesis * 2, ...vals, 1);
    ui.balanceEls.forEach((e, i) => {
      const v = vals[i];
      setText(e.value, v == null || isNaN(v) ? '–' : String(v));
      e.bar.style.width = v == null || isNaN(v) ? '0' : `${Math.max(0, Math.min(100, (v / scale) * 100)).toFixed(1)}%`;
    });
    const sum = vals.reduce((a, v) => a + (isNaN(v) ? 0 : v), 0);
    const expected = state.genesis * (vals.length || state.ids.length);
    const sumEl = $('balances-sum');
    setText(sumEl, vals.length ? `Σ ${sum} ${sum === expected ? '=' : '≠'} ${vals.length} × ${state.genesis} = ${expected}` : '');
    sumEl.classList.toggle('bad', vals.length > 0 && sum !== expected);
    setText($('balances-src'), b ? `node ${b.node} · height ${b.height}` : '');
  }

  // ---------------------------------------------------------------- header & safety
  function renderHeaderStats() {
    const s = state.stats[state.stats.length - 1];
    setText($('fact-height'), s && s.height != null ? s.height : '–');
    setText($('fact-tps'), s && num(s.committed_per_s) != null ? fmtRate(s.committed_per_s) : '–');
    setText($('fact-lat'), s ? `${fmtMs(s.latency_p50_ms)} / ${fmtMs(s.latency_p99_ms)} ms` : '–');
  }

  function renderSafety() {
    const box = $('safety');
    const s = state.safety;
    const text = box.querySelector('.text');
    const list = box.querySelector('.problems');
    list.replaceChildren();
    if (!s) {
      setAttr(box, 'data-ok', 'unknown');
      setText(text, 'checking…');
      box.title = 'waiting for the first safety check';
      return;
    }
    const checked = Array.isArray(s.checked) ? s.checked : [];
    const problems = Array.isArray(s.problems) ? s.problems.map(String) : [];
    const totalOk = s.total === s.expected;
    const ok = !!s.ok && totalOk && !problems.length;
    setAttr(box, 'data-ok', ok ? 'true' : 'false');
    if (ok) {
      setText(text, `Safe: ${checked.length} chains agree up to block ${s.agreed_height} · total ${s.total} = ${s.expected}`);
    } else {
      setText(text, `UNSAFE: ${problems.length || 1} problem${problems.length > 1 ? 's' : ''} · total ${s.total} ${totalOk ? '=' : '≠'} ${s.expected}`);
      for (const p of problems.slice(0, 8)) list.append(el('li', { text: p }));
      if (problems.length > 8) list.append(el('li', { text: `… ${problems.length - 8} more` }));
    }
    box.title = checked.map(c => `node ${c.node}: height ${c.height} ${c.ok ? 'ok' : `PROBLEM ${c.problem || ''}`}`).join('\n') +
      `\nchecked ${fmtTime(s.unix_ms)}`;
  }

  function renderSafetyAge() {
    const box = $('safety');
    const stale = state.safety && Date.now() - state.safetyAt > 10000;
    box.classList.toggle('stale', !!stale);
  }

  // ---------------------------------------------------------------- event log
  function resetLog(entries) {
    $('log').replaceChildren();
    for (const e of entries.slice(-LOG_MAX)) addLogLine(e, false);
  }

  function addLogLine(entry, fresh) {
    const list = $('log');
    const node = Number(entry.node) || 0;
    const level = ['info', 'warn', 'action'].includes(entry.level) ? entry.level : 'info';
    const li = el('li', { class: `lv-${level}${fresh ? ' fresh' : ''}` },
      el('span', { class: 'time', text: fmtTime(entry.unix_ms) }),
      el('span', { class: 'who', style: `color:${nodeColor(node)}`, text: node ? `n${node}` : 'dash' }),
      el('span', { class: 'msg', text: String(entry.text ?? '') }));
    list.prepend(li);
    while (list.children.length > LOG_MAX) list.lastElementChild.remove();
  }

  // ---------------------------------------------------------------- chart
  function drawChart() {
    const canvas = $('chart');
    const wrap = canvas.parentElement;
    const w = wrap.clientWidth, h = wrap.clientHeight;
    if (!w || !h) return;
    const dpr = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
      canvas.style.width = `${w}px`; canvas.style.height = `${h}px`;
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const css = getComputedStyle(document.documentElement);
    const col = name => css.getPropertyValue(name).trim();
    const pad = { l: 40, r: 34, t: 18, b: 16 };
    const pw = w - pad.l - pad.r, ph = h - pad.t - pad.b;
    ctx.font = '10.5px ui-monospace, Menlo, Consolas, monospace';
    const stats = state.stats;
    if (!stats.length) {
      ctx.fillStyle = col('--faint');
      ctx.textAlign = 'center';
      ctx.fillText('waiting for stats…', w / 2, h / 2);
      return;
    }
    const tMax = stats[stats.length - 1].unix_ms, tMin = tMax - CHART_SPAN_MS;
    const pts = stats.filter(s => s.unix_ms >= tMin - 1000);
    const x = t => pad.l + ((t - tMin) / CHART_SPAN_MS) * pw;
    const tpsMax = 4 * niceCeil(Math.max(10, ...pts.map(s => num(s.committed_per_s) || 0)) * 1.05 / 4);
    const latMax = 4 * niceCeil(Math.max(1, ...pts.map(s => Math.max(num(s.latency_p99_ms) || 0, num(s.latency_p50_ms) || 0))) * 1.05 / 4);
    const yT = v => pad.t + ph - (v / tpsMax) * ph;
    const yL = v => pad.t + ph - (v / latMax) * ph;

    // fault seconds, shaded (contiguous seconds merged into one band)
    ctx.fillStyle = 'rgba(239,68,68,0.16)';
    let band = null;
    const flush = () => { if (band) ctx.fillRect(band[0], pad.t, band[1] - band[0], ph); band = null; };
    for (const s of pts) {
      if (!s.fault) { flush(); continue; }
      const x0 = Math.max(pad.l, x(s.unix_ms - 1000)), x1 = x(s.unix_ms);
      if (band && x0 <= band[1] + 1) band[1] = x1; else { flush(); band = [x0, x1]; }
    }
    flush();
    // grid and axes labels
    ctx.strokeStyle = col('--grid'); ctx.lineWidth = 1;
    ctx.fillStyle = col('--faint');
    for (let i = 0; i <= 4; i++) {
      const yy = Math.round(pad.t + (ph * i) / 4) + 0.5;
      ctx.beginPath(); ctx.moveTo(pad.l, yy); ctx.lineTo(pad.l + pw, yy); ctx.stroke();
      ctx.textAlign = 'right'; ctx.fillStyle = col('--c-tps');
      ctx.fillText(fmtRate(tpsMax * (1 - i / 4)), pad.l - 5, yy + 3.5);
      ctx.textAlign = 'left'; ctx.fillStyle = col('--c-p99');
      ctx.fillText(fmtMs(latMax * (1 - i / 4)), pad.l + pw + 5, yy + 3.5);
    }
    ctx.textAlign = 'right'; ctx.fillStyle = col('--c-tps'); ctx.fillText('/s', pad.l - 5, pad.t - 5);
    ctx.textAlign = 'left'; ctx.fillStyle = col('--c-p99'); ctx.fillText('ms', pad.l + pw + 5, pad.t - 5);
    ctx.fillStyle = col('--faint');
    for (let m = 5; m >= 0; m--) {
      ctx.textAlign = m === 5 ? 'left' : m === 0 ? 'right' : 'center';
      ctx.fillText(m ? `-${m}m` : 'now', x(tMax - m * 60000), h - 4);
    }
    // committed/s area
    const series = (get, y) => {
      const segs = []; let cur = null, last = null;
      for (const s of pts) {
        const v = num(get(s));
        if (v == null || (last != null && s.unix_ms - last > 3500)) { cur = null; }
        if (v != null) { if (!cur) segs.push(cur = []); cur.push([x(s.unix_ms), y(v)]); }
        last = s.unix_ms;
      }
      return segs;
    };
    ctx.save();
    ctx.beginPath(); ctx.rect(pad.l, pad.t - 2, pw, ph + 4); ctx.clip();
    const tps = series(s => s.committed_per_s, yT);
    const grad = ctx.createLinearGradient(0, pad.t, 0, pad.t + ph);
    grad.addColorStop(0, col('--c-tps-fill')); grad.addColorStop(1, 'rgba(0,0,0,0)');
    for (const seg of tps) {
      ctx.beginPath(); ctx.moveTo(seg[0][0], pad.t + ph);
      for (const [px, py] of seg) ctx.lineTo(px, py);
      ctx.lineTo(seg[seg.length - 1][0], pad.t + ph); ctx.closePath();
      ctx.fillStyle = grad; ctx.fill();
    }
    strokeSegs(ctx, tps, col('--c-tps'), 1.6);
    strokeSegs(ctx, series(s => s.latency_p50_ms, yL), col('--c-p50'), 1.3);
    strokeSegs(ctx, series(s => s.latency_p99_ms, yL), col('--c-p99'), 1.3, [4, 3]);
    ctx.restore();
    drawLeaderMarks(ctx, pts, x, pad, ph, col('--leader'));
  }

  function strokeSegs(ctx, segs, color, width, dash) {
    ctx.strokeStyle = color; ctx.lineWidth = width; ctx.setLineDash(dash || []);
    for (const seg of segs) {
      ctx.beginPath();
      seg.forEach(([px, py], i) => (i ? ctx.lineTo(px, py) : ctx.moveTo(px, py)));
      if (seg.length === 1) ctx.lineTo(seg[0][0] + 1, seg[0][1]);
      ctx.stroke();
    }
    ctx.setLineDash([]);
  }

  function drawLeaderMarks(ctx, pts, x, pad, ph, color) {
    let prev, lastLabelX = -1e9;
    ctx.font = '10px system-ui, sans-serif';
    for (const s of pts) {
      const l = s.leader == null ? null : Number(s.leader);
      if (prev !== undefined && l != null && l !== prev) {
        const xx = Math.round(x(s.unix_ms)) + 0.5;
        if (xx >= pad.l) {
          ctx.strokeStyle = color; ctx.globalAlpha = 0.75; ctx.setLineDash([2, 3]);
          ctx.beginPath(); ctx.moveTo(xx, pad.t); ctx.lineTo(xx, pad.t + ph); ctx.stroke();
          ctx.setLineDash([]); ctx.globalAlpha = 1;
          if (xx - lastLabelX > 58) {
            ctx.fillStyle = color; ctx.textAlign = xx > pad.l + 40 ? 'right' : 'left';
            ctx.fillText(`leader → ${l}`, ctx.textAlign === 'right' ? xx - 3 : xx + 3, pad.t + 9);
            lastLabelX = xx;
          }
        }
      }
      prev = l;
    }
  }

  function niceCeil(v) {
    if (v <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  // ---------------------------------------------------------------- static pieces & loops
  function buildLegend() {
    const box = $('legend');
    box.replaceChildren(
      el('span', { text: 'dots: one per sender→receiver→kind per 100 ms, bigger = more · dim = heartbeat · ' }),
      el('span', { class: 'failed-key', text: 'red burst midway = undelivered' }));
  }

  // About 30 frames a second: smooth enough for the dots, and half the painting of 60 (the page
  // often shares a small machine with the cluster it shows).
  const FRAME_MS = 33;
  let lastFrame = 0;
  function frame(now) {
    requestAnimationFrame(frame);
    if (now - lastFrame < FRAME_MS) return;
    lastFrame = now;
    try {
      renderDirty();
      animateDots(now);
    } catch (e) { console.error(e); }
  }

  function start() {
    buildLegend();
    buildRates();
    wirePanel();
    wireActions();
    configureForm();
    setConnection('connecting');
    document.addEventListener('click', ev => {
      const p = $('node-panel');
      if (!p.hidden && !p.contains(ev.target) && ev.target.closest && ev.target.closest('#ring')) closePanel();
    });
    window.addEventListener('resize', () => { state.dirty.chart = true; });
    setInterval(() => {
      if (state.dirty.chart) { state.dirty.chart = false; try { drawChart(); } catch (e) { console.error(e); } }
      renderRates();
    }, 500);
    setInterval(renderSafetyAge, 1000);
    requestAnimationFrame(frame);
    drawChart();
    connect();
  }

  start();
})();
