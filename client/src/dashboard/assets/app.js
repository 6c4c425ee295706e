// Benmo live dashboard. Plain JS, no dependencies, nothing fetched from outside the page's own server.
// Data arrives as Server-Sent Events on /events (state, messages, chain, stats, log, safety);
// actions are JSON POSTs to /api/*. Everything drawn is bounded: dots <= MAX_DOTS, log <= LOG_MAX lines,
// chain <= the blocks the server sends, DOM for nodes/links is built once per cluster shape and then updated.
'use strict';
(function () {
  // ------------------------------------------------------------------ constants
  const KINDS = ['prepare', 'promise', 'accept', 'accepted', 'decide', 'nack', 'forward',
    'heartbeat', 'heartbeat-reply', 'fetch', 'blocks'];
  const KIND_COLOR = {
    prepare: '#f2a93b', promise: '#f5d76e', accept: '#58a6ff', accepted: '#2dd4bf',
    decide: '#4ade80', nack: '#ff6b6b', forward: '#c792ea', heartbeat: '#6e7b8d',
    'heartbeat-reply': '#9aa6b5', fetch: '#ff9a5c', blocks: '#f778ba',
  };
  // lower = drawn first when the dot budget is short (rare, instructive kinds win)
  const KIND_PRIORITY = {
    nack: 0, prepare: 1, promise: 2, decide: 3, fetch: 4, blocks: 5, forward: 6,
    accept: 7, accepted: 8, heartbeat: 9, 'heartbeat-reply': 10,
  };
  const MAX_DOTS = 150;       // alive + scheduled dots, never more
  const DOTS_PER_FLOW = 1;    // per flow per messages interval (count shown by size / a number)
  const DOT_MS = 720;         // travel time of one dot
  const LOG_MAX = 50;
  const HIST_MS = 5 * 60 * 1000;
  const HIST_MAX = 900;       // stats points kept (1/s → 15 min)
  const MARK_MAX = 200;
  const FAULT_START = new Set(['crashed', 'severed', 'partition', 'node_down']);
  const FAULT_END = new Set(['healed', 'restarted', 'node_up']);
  const SVGNS = 'http://www.w3.org/2000/svg';

  // ------------------------------------------------------------------ state
  const S = {
    ids: [],                 // node ids, sorted, as in the last state
    nodes: new Map(),        // id → node object from the last state
    shapeKey: '',            // ids joined; the ring/table are rebuilt when it changes
    leader: null,            // computed leader id (role leader, highest ballot)
    lastLeader: null,        // last non-null leader (presets use it while an election runs)
    maxHeight: 0,
    canRestart: false,
    restartHint: '',
    mode: '',
    cuts: new Map(),         // "a-b" → {ab: bool, ba: bool}
    stateCount: 0,
    serverNow: 0,            // latest server t seen (charts use server time)
    clientOffset: 0,         // serverNow - Date.now() at the last event
    showKind: Object.fromEntries(KINDS.map(k => [k, !(k === 'heartbeat' || k === 'heartbeat-reply')])),
    msgWindow: [],           // last messages events: {t, interval, counts}
    stats: [],               // {t, tps, p50, p99}
    leaderMarks: [],         // {t, id}
    faultBands: [],          // {start, end|null}
    faultNow: false,
    lastSafety: null,
    lastSafetyAt: 0,
    lastChainTotal: null,
    myTransfers: new Set(),  // ids this page submitted (highlighted in the chain)
    pendingLinks: new Map(), // "a-b" → deadline ms
    preview: null,           // set of link keys being previewed
  };

  // ------------------------------------------------------------------ helpers
  const $ = (sel, root) => (root || document).querySelector(sel);
  function h(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    if (attrs) for (const k in attrs) {
      const v = attrs[k];
      if (v == null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const kid of kids) if (kid != null) e.append(kid);
    return e;
  }
  function s(tag, attrs) {
    const e = document.createElementNS(SVGNS, tag);
    if (attrs) for (const k in attrs) e.setAttribute(k, String(attrs[k]));
    return e;
  }
  function setAttr(e, k, v) { v = String(v); if (e.getAttribute(k) !== v) e.setAttribute(k, v); }
  function setText(e, v) { v = v == null ? '' : String(v); if (e.textContent !== v) e.textContent = v; }
  function linkKey(a, b) { return a < b ? a + '-' + b : b + '-' + a; }
  function short(hash, n) { return typeof hash === 'string' ? hash.slice(0, n || 8) : '—'; }
  function fmtTime(t) {
    const d = new Date(t);
    const p = (x) => String(x).padStart(2, '0');
    return p(d.getHours()) + ':' + p(d.getMinutes()) + ':' + p(d.getSeconds());
  }
  function fmtRate(x) {
    if (x == null || !isFinite(x)) return '–';
    if (x >= 10000) return (x / 1000).toFixed(0) + 'k';
    if (x >= 1000) return (x / 1000).toFixed(1) + 'k';
    if (x >= 100) return x.toFixed(0);
    if (x >= 10) return x.toFixed(0);
    return x.toFixed(1).replace(/\.0$/, '');
  }
  function fmtMs(x) {
    if (x == null || !isFinite(x)) return '–';
    if (x >= 1000) return (x / 1000).toFixed(2) + ' s';
    if (x >= 100) return x.toFixed(0) + ' ms';
    if (x >= 10) return x.toFixed(1) + ' ms';
    return x.toFixed(2) + ' ms';
  }
  function parseBallot(b, fallbackRound) {
    // "3.1" → [3, 1]; anything else → [fallbackRound||0, 0]
    if (typeof b === 'string') {
      const m = /^(\d+)\.(\d+)$/.exec(b.trim());
      if (m) return [Number(m[1]), Number(m[2])];
    }
    return [Number(fallbackRound) || 0, 0];
  }
  function cmpBallot(x, y) { return x[0] - y[0] || x[1] - y[1]; }
  function ballotHue(b) {
    const [r, n] = parseBallot(b);
    if (r === 0 && n === 0) return null;
    return Math.round(((r * 7 + n) * 137.508 + 200) % 360);
  }
  function nodeColors(n) {
    if (!n || !n.up) return { fill: '#1f252d', stroke: '#4b5563' };
    const hue = ballotHue(n.promised || n.ballot);
    if (hue == null) return { fill: '#2a3441', stroke: '#6b7a8f' };
    return { fill: `hsl(${hue} 42% 30%)`, stroke: `hsl(${hue} 72% 64%)` };
  }
  function serverTime() { return Date.now() + S.clientOffset; }
  function noteServerT(t) {
    if (typeof t !== 'number' || !isFinite(t)) return;
    if (t > S.serverNow) S.serverNow = t;
    S.clientOffset = t - Date.now();
  }

  // per-event counts and handler time, for whoever wonders whether the page keeps up (window.benmoDebug)
  const DEBUG = {};
  window.benmoDebug = DEBUG;

  // ------------------------------------------------------------------ SSE
  const sseEl = $('#sse-status');
  let es = null;
  let reconnectTimer = null;
  function setConnected(ok, label) {
    setAttr(sseEl, 'data-connected', ok ? 'true' : 'false');
    setText($('.label', sseEl), label);
    document.body.classList.toggle('disconnected', !ok && S.stateCount > 0);
  }
  function connect() {
    if (reconnectTimer) { clearTimeout(reconnectTimer); reconnectTimer = null; }
    try { es = new EventSource('/events'); } catch (e) { scheduleReconnect(); return; }
    es.addEventListener('open', () => setConnected(true, 'live'));
    es.addEventListener('error', () => {
      if (es.readyState === EventSource.CLOSED) { setConnected(false, 'disconnected · retrying'); scheduleReconnect(); }
      else setConnected(false, 'reconnecting…');
    });
    const on = (name, fn) => es.addEventListener(name, (ev) => {
      const t0 = performance.now();
      let data;
      try { data = JSON.parse(ev.data); } catch (e) { console.warn('bad ' + name + ' event', e); return; }
      try { fn(data); } catch (e) { console.warn('while rendering ' + name, e); }
      const c = DEBUG[name] || (DEBUG[name] = { n: 0, ms: 0, bytes: 0 });
      c.n++; c.ms += performance.now() - t0; c.bytes += ev.data.length;
    });
    on('state', onState);
    on('messages', onMessages);
    on('chain', onChain);
    on('stats', onStats);
    on('log', onLog);
    on('safety', onSafety);
  }
  function scheduleReconnect() {
    if (reconnectTimer) return;
    try { if (es) es.close(); } catch (e) { /* ignore */ }
    reconnectTimer = setTimeout(connect, 2000);
  }

  // ------------------------------------------------------------------ state event
  const ring = $('#ring');
  const linksLayer = $('#links-layer');
  const nodesLayer = $('#nodes-layer');
  const handlesLayer = $('#handles-layer');
  const nodeEls = new Map();   // id → {g, body, halo, id, l1, l2, l3, title}
  const linkEls = new Map();   // key → {a, b, g, base, segA, segB, arrow, hit, handle, knob, x1, x2, titleA, titleB}
  const rowEls = new Map();    // id → {tr, cells...}

  function onState(d) {
    noteServerT(d.t);
    const list = Array.isArray(d.nodes) ? d.nodes.filter(n => n && Number.isInteger(n.id)) : [];
    list.sort((a, b) => a.id - b.id);
    S.ids = list.map(n => n.id);
    S.nodes = new Map(list.map(n => [n.id, n]));
    S.mode = d.mode || '';
    S.canRestart = !!d.can_restart;
    S.restartHint = d.restart_hint || '';
    const key = S.ids.join(',');
    if (key !== S.shapeKey) { S.shapeKey = key; buildShape(); }
    document.body.classList.remove('no-data');

    // leader: up node with role leader; several → highest ballot
    let best = null, bestB = null;
    let maxH = 0;
    for (const n of list) {
      if (n.up && Number.isFinite(n.height)) maxH = Math.max(maxH, n.height);
      if (!n.up || n.role !== 'leader') continue;
      const b = parseBallot(n.ballot, n.ballot_round);
      if (best == null || cmpBallot(b, bestB) > 0 || (cmpBallot(b, bestB) === 0 && n.id > best)) { best = n.id; bestB = b; }
    }
    if (best !== S.leader && best != null && S.stateCount > 0) addLeaderMark(d.t || serverTime(), best);
    S.leader = best;
    if (best != null) S.lastLeader = best;
    S.maxHeight = maxH;

    // cuts: a→b cut if b ∈ a.cut_outgoing or a ∈ b.cut_incoming
    const cutDir = new Set();
    for (const n of list) {
      if (!n.up) continue;
      for (const p of (n.cut_outgoing || [])) cutDir.add(n.id + '>' + p);
      for (const p of (n.cut_incoming || [])) cutDir.add(p + '>' + n.id);
    }
    let anyCut = false;
    for (let i = 0; i < S.ids.length; i++) for (let j = i + 1; j < S.ids.length; j++) {
      const a = S.ids[i], b = S.ids[j];
      const c = { ab: cutDir.has(a + '>' + b), ba: cutDir.has(b + '>' + a) };
      if (c.ab || c.ba) anyCut = true;
      const k = a + '-' + b;
      const prev = S.cuts.get(k);
      if (prev && (prev.ab !== c.ab || prev.ba !== c.ba)) S.pendingLinks.delete(k);
      S.cuts.set(k, c);
    }

    // fault bands from state (a node down or any link cut)
    const faultNow = anyCut || list.some(n => !n.up);
    trackFaultFromState(faultNow, d.t || serverTime());

    renderHeader();
    renderNodes();
    renderLinks();
    renderTable();
    refreshPresets();

    S.stateCount++;
    setText($('#update-counter'), S.stateCount);
    setText($('#last-state-t'), d.t != null ? d.t : '');
    if (sseEl.getAttribute('data-connected') !== 'true') setConnected(true, 'live');
  }

  function renderHeader() {
    setText($('#cluster-size'), S.ids.length || '–');
    setText($('#cluster-mode'), S.mode || '–');
    setText($('#leader'), S.leader != null ? S.leader : '');
    setText($('#cluster-height'), S.ids.length ? S.maxHeight : '–');
    const tf = $('#transfer-from'), tt = $('#transfer-to');
    if (S.ids.length) {
      const lo = S.ids[0], hi = S.ids[S.ids.length - 1];
      setAttr(tf, 'min', lo); setAttr(tf, 'max', hi); setAttr(tt, 'min', lo); setAttr(tt, 'max', hi);
    }
  }

  // ------------------------------------------------------------------ ring geometry
  const wrap = $('#ring-wrap');
  const G = { W: 0, H: 0, cx: 0, cy: 0, R: 0, nodeR: 24, pos: new Map() };

  function computeLayout() {
    const r = wrap.getBoundingClientRect();
    G.W = Math.max(200, r.width); G.H = Math.max(200, r.height);
    const n = S.ids.length || 5;
    G.nodeR = n >= 7 ? 21 : n >= 5 ? 24 : 26;
    // room for labels: beside the nodes (mx), above the top node (myTop) and below the lower ones (myBot)
    const mx = G.nodeR + 112, myTop = Math.max(G.nodeR + 14, 40), myBot = G.nodeR + 68;
    const lowY = Math.cos(Math.PI / n);  // the lowest nodes sit at cy + R·cos(π/n) for odd n
    G.R = Math.max(70, Math.min((G.W - 2 * mx) / 2, (G.H - myTop - myBot) / (1 + lowY)));
    G.cx = G.W / 2; G.cy = myTop + G.R + Math.max(0, (G.H - myTop - myBot - G.R * (1 + lowY)) / 2);
    G.pos.clear();
    S.ids.forEach((id, i) => {
      const ang = -Math.PI / 2 + i * 2 * Math.PI / S.ids.length;
      const ux = Math.cos(ang), uy = Math.sin(ang);
      G.pos.set(id, { x: G.cx + G.R * ux, y: G.cy + G.R * uy, ux, uy });
    });
    ring.setAttribute('viewBox', `0 0 ${G.W} ${G.H}`);
    sizeCanvas(dotsCanvas, G.W, G.H);
    placeAll();
  }

  function buildShape() {
    linksLayer.textContent = ''; nodesLayer.textContent = ''; handlesLayer.textContent = '';
    nodeEls.clear(); linkEls.clear(); S.cuts.clear(); S.pendingLinks.clear();
    const ids = S.ids;
    for (let i = 0; i < ids.length; i++) for (let j = i + 1; j < ids.length; j++) {
      const a = ids[i], b = ids[j], k = a + '-' + b;
      const g = s('g', { class: 'link', 'data-state': 'none' });
      const base = s('line', { class: 'base' });
      const segA = s('line', { class: 'seg a' });
      const segB = s('line', { class: 'seg b' });
      const arrow = s('path', { class: 'arrow' });
      const hit = s('line', { class: 'hit', 'data-link-hit': k });
      const tHit = s('title'); hit.append(tHit);
      g.append(base, segA, segB, arrow, hit);
      linksLayer.append(g);
      const handle = s('g', { class: 'handle', 'data-link': k, 'data-cut': 'none', 'data-cut-dir': 'none', tabindex: '0', role: 'button' });
      const hc = s('circle', { class: 'hit', r: 14 });
      const knob = s('circle', { class: 'knob', r: 6.5 });
      const x1 = s('line', { class: 'x' }), x2 = s('line', { class: 'x' });
      const tHandle = s('title');
      handle.append(tHandle, hc, knob, x1, x2);
      handlesLayer.append(handle);
      const L = { a, b, key: k, g, base, segA, segB, arrow, hit, handle, hc, knob, x1, x2, tHit, tHandle };
      linkEls.set(k, L);
      const click = (ev) => { ev.preventDefault(); onLinkClick(k); };
      hit.addEventListener('click', click);
      handle.addEventListener('click', click);
      handle.addEventListener('keydown', (ev) => { if (ev.key === 'Enter' || ev.key === ' ') click(ev); });
      const hover = (on) => () => { g.classList.toggle('hover', on); handle.classList.toggle('hover', on); };
      for (const el of [hit, handle]) { el.addEventListener('mouseenter', hover(true)); el.addEventListener('mouseleave', hover(false)); }
    }
    for (const id of ids) {
      const g = s('g', { class: 'node', 'data-node-id': id, 'data-up': 'true', 'data-role': 'follower' });
      const title = s('title');
      const halo = s('circle', { class: 'halo' });
      const body = s('circle', { class: 'body' });
      const tid = s('text', { class: 'id' }); tid.textContent = id;
      const lbl = s('text', { class: 'lbl' });
      const l1 = s('tspan', { class: 'l1' }), l2 = s('tspan', { class: 'l2' }), l3 = s('tspan', { class: 'l3' }), l4 = s('tspan', { class: 'l4' });
      lbl.append(l1, l2, l3, l4);
      g.append(title, halo, body, tid, lbl);
      nodesLayer.append(g);
      nodeEls.set(id, { g, title, halo, body, tid, lbl, l1, l2, l3, l4 });
    }
    buildTable();
    computeLayout();
  }

  function placeAll() {
    const R = G.nodeR;
    for (const [id, e] of nodeEls) {
      const p = G.pos.get(id); if (!p) continue;
      setAttr(e.body, 'cx', p.x.toFixed(1)); setAttr(e.body, 'cy', p.y.toFixed(1)); setAttr(e.body, 'r', R);
      setAttr(e.halo, 'cx', p.x.toFixed(1)); setAttr(e.halo, 'cy', p.y.toFixed(1)); setAttr(e.halo, 'r', R + 6);
      setAttr(e.tid, 'x', p.x.toFixed(1)); setAttr(e.tid, 'y', p.y.toFixed(1));
      // label outside the ring: below the lower nodes, beside the others (the top node: to its right)
      const lineH = 14, lines = 3;
      let lx, top, anchor;
      if (p.uy > 0.6) {
        anchor = p.ux > 0.25 ? 'start' : p.ux < -0.25 ? 'end' : 'middle';
        lx = p.x + p.ux * (R * 0.6);
        top = p.y + R + 16;
      } else {
        anchor = p.ux < -0.05 ? 'end' : 'start';
        lx = p.x + (anchor === 'end' ? -(R + 10) : (R + 10));
        // the top node's links leave downwards: lift its label clear of them
        top = p.uy < -0.95 ? p.y - 26 : p.y - (lines * lineH) / 2 + 10;
      }
      setAttr(e.lbl, 'text-anchor', anchor);
      for (const [i, t] of [e.l1, e.l2, e.l3, e.l4].entries()) { setAttr(t, 'x', lx.toFixed(1)); setAttr(t, 'y', (top + i * lineH).toFixed(1)); }
    }
    for (const L of linkEls.values()) placeLink(L);
  }

  function placeLink(L) {
    const pa = G.pos.get(L.a), pb = G.pos.get(L.b);
    if (!pa || !pb) return;
    const dx = pb.x - pa.x, dy = pb.y - pa.y, len = Math.hypot(dx, dy) || 1;
    const ux = dx / len, uy = dy / len;
    const R = G.nodeR + 3;
    const ax = pa.x + ux * R, ay = pa.y + uy * R, bx = pb.x - ux * R, by = pb.y - uy * R;
    const mx = (pa.x + pb.x) / 2, my = (pa.y + pb.y) / 2;
    const gap = 13;
    const f = (v) => v.toFixed(1);
    for (const ln of [L.base, L.hit]) { setAttr(ln, 'x1', f(ax)); setAttr(ln, 'y1', f(ay)); setAttr(ln, 'x2', f(bx)); setAttr(ln, 'y2', f(by)); }
    setAttr(L.segA, 'x1', f(ax)); setAttr(L.segA, 'y1', f(ay)); setAttr(L.segA, 'x2', f(mx - ux * gap)); setAttr(L.segA, 'y2', f(my - uy * gap));
    setAttr(L.segB, 'x1', f(mx + ux * gap)); setAttr(L.segB, 'y1', f(my + uy * gap)); setAttr(L.segB, 'x2', f(bx)); setAttr(L.segB, 'y2', f(by));
    setAttr(L.hc, 'cx', f(mx)); setAttr(L.hc, 'cy', f(my));
    setAttr(L.knob, 'cx', f(mx)); setAttr(L.knob, 'cy', f(my));
    const xs = 3.2;
    setAttr(L.x1, 'x1', f(mx - xs)); setAttr(L.x1, 'y1', f(my - xs)); setAttr(L.x1, 'x2', f(mx + xs)); setAttr(L.x1, 'y2', f(my + xs));
    setAttr(L.x2, 'x1', f(mx - xs)); setAttr(L.x2, 'y1', f(my + xs)); setAttr(L.x2, 'x2', f(mx + xs)); setAttr(L.x2, 'y2', f(my - xs));
    L.geom = { ax, ay, bx, by, mx, my, ux, uy };
    placeArrow(L);
  }

  function placeArrow(L) {
    // one-way cut: a red arrowhead just before the gap, pointing in the cut direction
    const g = L.geom; if (!g) return;
    const st = L.g.getAttribute('data-state');
    if (st !== 'fwd' && st !== 'rev') { setAttr(L.arrow, 'd', ''); return; }
    const dir = st === 'fwd' ? 1 : -1;
    const ux = g.ux * dir, uy = g.uy * dir;
    const tipx = g.mx - ux * 16, tipy = g.my - uy * 16;      // before the knob, on the sender's side
    const bx = tipx - ux * 9, by = tipy - uy * 9, px = -uy * 5, py = ux * 5;
    setAttr(L.arrow, 'd', `M${tipx.toFixed(1)},${tipy.toFixed(1)} L${(bx + px).toFixed(1)},${(by + py).toFixed(1)} L${(bx - px).toFixed(1)},${(by - py).toFixed(1)} Z`);
  }

  function renderNodes() {
    for (const [id, e] of nodeEls) {
      const n = S.nodes.get(id) || { id, up: false };
      const up = !!n.up;
      const role = up ? (n.role === 'leader' || n.role === 'candidate' ? n.role : 'follower') : 'down';
      const isLeader = up && id === S.leader;
      setAttr(e.g, 'data-up', up ? 'true' : 'false');
      setAttr(e.g, 'data-role', role);
      e.g.classList.toggle('is-leader', isLeader);
      const c = nodeColors(n);
      if (up) { setAttr(e.body, 'fill', c.fill); setAttr(e.body, 'stroke', c.stroke); }
      const hue = up ? ballotHue(n.promised || n.ballot) : null;
      if (hue != null) setAttr(e.halo, 'stroke', `hsl(${hue} 85% 70%)`);
      // short lines (they sit beside the ring): role, ballot, height/pending, and a warning if any
      if (!up) {
        setText(e.l1, 'down');
        setText(e.l2, n.error ? truncate(n.error, 16) : 'unreachable');
        setText(e.l3, '');
        setText(e.l4, '');
      } else {
        let l1 = role === 'leader' ? (isLeader ? '★ leader' : '☆ stale leader') : role;
        if (role === 'follower') l1 = n.leader != null ? 'follows ' + n.leader : 'no leader';
        setText(e.l1, l1);
        setText(e.l2, 'ballot ' + truncate(n.promised || n.ballot || '–', 9));
        const lagN = Number.isFinite(n.height) ? S.maxHeight - n.height : 0;
        const hs = 'h ' + (n.height != null ? n.height : '–');
        setText(e.l3, lagN > 0 ? hs + ' · −' + lagN : hs + ' · pend ' + (n.pending != null ? n.pending : '–'));
        e.l3.classList.toggle('warn', lagN > 0);
        setText(e.l4, n.quorum_connected === false ? 'no quorum' : '');
      }
      const tip = up
        ? `node ${id} · ${role}${n.leader != null ? ' · follows ' + n.leader : ''}\nballot ${n.ballot || '–'} · promised ${n.promised || '–'}\nheight ${n.height} · head ${short(n.head_hash, 16)}\npending ${n.pending} · in flight ${n.in_flight}\n${n.address || ''}`
        : `node ${id} · down${n.error ? ' · ' + n.error : ''}${n.address ? '\n' + n.address : ''}`;
      setText(e.title, tip);
    }
  }
  function truncate(t, n) { t = String(t); return t.length > n ? t.slice(0, n - 1) + '…' : t; }

  function renderLinks() {
    const now = performance.now();
    for (const [k, L] of linkEls) {
      const c = S.cuts.get(k) || { ab: false, ba: false };
      const cut = c.ab && c.ba ? 'both' : c.ab ? `${L.a}>${L.b}` : c.ba ? `${L.b}>${L.a}` : 'none';
      const cutDir = c.ab && c.ba ? 'both' : c.ab ? 'a>b' : c.ba ? 'b>a' : 'none';
      const st = c.ab && c.ba ? 'both' : c.ab ? 'fwd' : c.ba ? 'rev' : 'none';
      setAttr(L.handle, 'data-cut', cut);
      setAttr(L.handle, 'data-cut-dir', cutDir);
      if (L.g.getAttribute('data-state') !== st) { setAttr(L.g, 'data-state', st); placeLink(L); }
      const na = S.nodes.get(L.a), nb = S.nodes.get(L.b);
      L.g.classList.toggle('dim', !(na && na.up && nb && nb.up));
      const dl = S.pendingLinks.get(k);
      const pending = dl != null && dl > now;
      if (!pending && dl != null) S.pendingLinks.delete(k);
      L.g.classList.toggle('pending', pending);
      L.g.classList.toggle('preview', !!(S.preview && S.preview.has(k)) && st === 'none');
      let tip;
      if (st === 'none') tip = `link ${L.a} ↔ ${L.b}: connected · click to sever both directions`;
      else if (st === 'both') tip = `link ${L.a} ↔ ${L.b}: cut both ways · click to heal`;
      else {
        const [x, y] = st === 'fwd' ? [L.a, L.b] : [L.b, L.a];
        tip = `link ${L.a} ↔ ${L.b}: one-way cut, ${x} → ${y} is cut (${y} → ${x} still works) · click to heal`;
      }
      setText(L.tHit, tip); setText(L.tHandle, tip);
    }
  }

  function onLinkClick(k) {
    const L = linkEls.get(k); if (!L) return;
    const c = S.cuts.get(k) || { ab: false, ba: false };
    S.pendingLinks.set(k, performance.now() + 3000);
    L.g.classList.add('pending');
    if (c.ab || c.ba) post('/api/heal', { a: L.a, b: L.b }, `heal ${L.a}–${L.b}`);
    else post('/api/sever', { a: L.a, b: L.b, one_way: false }, `sever ${L.a}–${L.b}`);
  }

  // ------------------------------------------------------------------ nodes table
  function buildTable() {
    const body = $('#nodes-body');
    body.textContent = '';
    rowEls.clear();
    for (const id of S.ids) {
      const sw = h('span', { class: 'swatch' });
      const cId = h('td', null, sw, h('b', { text: String(id) }));
      const cRole = h('td', { class: 'role' });
      const cFollows = h('td', { class: 'num' });
      const cProm = h('td', { class: 'num' });
      const cHeight = h('td', { class: 'num' });
      const cPend = h('td', { class: 'num' });
      const cCut = h('td', { class: 'num' });
      const crash = h('button', { type: 'button', class: 'danger', 'data-action': 'crash', 'data-target': id, title: `crash node ${id} (kill it at once)`, text: 'crash' });
      crash.addEventListener('click', () => act(crash, '/api/crash', { node: id }, `crash ${id}`));
      const restart = h('button', { type: 'button', class: 'heal', 'data-action': 'restart', 'data-target': id, title: `restart node ${id}`, text: 'restart' });
      restart.addEventListener('click', () => act(restart, '/api/restart', { node: id }, `restart ${id}`));
      const cActs = h('td', { class: 'acts' }, restart, crash);
      const tr = h('tr', { 'data-row-node': id }, cId, cRole, cFollows, cProm, cHeight, cPend, cCut, cActs);
      // when the dashboard cannot restart nodes, a down node gets a line with the command to type
      const hint = h('code', { class: 'hintcmd', title: 'run this to bring the node back (click to select)' });
      const hintRow = h('tr', { class: 'hint-row', 'data-hint-node': id }, h('td', { colspan: 8 }, `↳ node ${id} is down; bring it back with `, hint));
      body.append(tr);
      rowEls.set(id, { tr, sw, cRole, cFollows, cProm, cHeight, cPend, cCut, cActs, crash, restart, hint, hintRow });
    }
  }

  function renderTable() {
    for (const [id, r] of rowEls) {
      const n = S.nodes.get(id) || { id, up: false };
      const up = !!n.up;
      setAttr(r.tr, 'data-up', up ? 'true' : 'false');
      const c = nodeColors(n);
      r.sw.style.background = c.fill; r.sw.style.borderColor = c.stroke;
      const role = up ? (n.role || 'follower') : 'down';
      const roleTxt = role === 'leader' && id !== S.leader ? 'leader (stale)' : role;
      const noq = up && n.quorum_connected === false;
      if (r.cRole.textContent !== roleTxt + (noq ? 'no quorum' : '')) {
        r.cRole.textContent = roleTxt;
        if (noq) r.cRole.append(h('span', { class: 'noq', text: 'no quorum', title: 'cannot reach a majority' }));
      }
      r.cRole.className = 'role ' + role;
      r.cRole.title = up ? '' : (n.error || 'down');
      setText(r.cFollows, up ? (n.leader != null ? n.leader : '—') : '');
      setText(r.cProm, up ? (n.promised || n.ballot || '—') : '');
      if (up) {
        const lag = Number.isFinite(n.height) ? S.maxHeight - n.height : 0;
        r.cHeight.textContent = '';
        r.cHeight.append(String(n.height != null ? n.height : '—'));
        if (lag > 0) r.cHeight.append(h('span', { class: 'lag', text: ' −' + lag }));
        r.cHeight.title = 'head ' + short(n.head_hash, 16);
      } else { setText(r.cHeight, ''); r.cHeight.title = ''; }
      setText(r.cPend, up ? `${n.pending != null ? n.pending : '–'} · ${n.in_flight != null ? n.in_flight : '–'}` : '');
      const outs = up ? (n.cut_outgoing || []) : [], ins = up ? (n.cut_incoming || []) : [];
      const cutTxt = (outs.length ? '→' + outs.join(',') : '') + (outs.length && ins.length ? ' ' : '') + (ins.length ? '←' + ins.join(',') : '');
      if (r.cCut.textContent !== cutTxt) { r.cCut.textContent = ''; if (cutTxt) r.cCut.append(h('span', { class: 'cut', text: cutTxt })); }
      r.cCut.title = up ? `sends nothing to: ${outs.join(', ') || 'none'} · takes nothing from: ${ins.join(', ') || 'none'}` : '';
      // buttons: both stay clickable (the server answers if the action makes no sense); the irrelevant one is quiet
      r.crash.classList.toggle('quiet', !up);
      // restart buttons exist only when the dashboard can restart nodes
      if (S.canRestart && !r.restart.isConnected) r.cActs.prepend(r.restart);
      if (!S.canRestart && r.restart.isConnected) r.restart.remove();
      r.restart.classList.toggle('quiet', up);
      const hintTxt = !S.canRestart && !up && S.restartHint ? S.restartHint.replace(/\{node\}/g, String(id)) : '';
      setText(r.hint, hintTxt);
      if (hintTxt && r.hintRow.previousSibling !== r.tr) r.tr.after(r.hintRow);
      if (!hintTxt && r.hintRow.isConnected) r.hintRow.remove();
    }
    const note = $('#restart-note');
    setText(note, S.canRestart ? '' : (S.restartHint ? 'restart from a shell: ' + S.restartHint.replace(/\{node\}/g, 'N') : ''));
  }

  // ------------------------------------------------------------------ messages + dots
  const dotsCanvas = $('#dots');
  const dctx = dotsCanvas.getContext('2d');
  const dots = [];          // {a, b, kind, count, start, dur, cut}
  const legendEls = new Map();

  function buildLegend() {
    const lg = $('#legend');
    lg.append(h('span', { class: 'legend-title', text: 'msg/s', title: 'messages per second by kind; click a kind to show or hide its dots' }));
    for (const k of KINDS) {
      const chip = h('button', { type: 'button', class: 'chip', 'data-kind': k, 'aria-pressed': S.showKind[k] ? 'true' : 'false', title: `show/hide ${k} messages` });
      const dot = h('i'); dot.style.background = KIND_COLOR[k];
      const rate = h('span', { class: 'rate', text: '0' });
      chip.append(dot, h('span', { text: k === 'heartbeat-reply' ? 'hb reply' : k }), rate);
      chip.addEventListener('click', () => {
        S.showKind[k] = !S.showKind[k];
        if (k === 'heartbeat' || k === 'heartbeat-reply') { S.showKind.heartbeat = S.showKind['heartbeat-reply'] = S.showKind[k]; }
        for (const [kk, c] of legendEls) setAttr(c.chip, 'aria-pressed', S.showKind[kk] ? 'true' : 'false');
      });
      lg.append(chip);
      legendEls.set(k, { chip, rate });
    }
  }

  function onMessages(d) {
    noteServerT(d.t);
    const interval = Number(d.interval_ms) > 0 ? Number(d.interval_ms) : 200;
    const flows = Array.isArray(d.flows) ? d.flows : [];
    const counts = {};
    for (const f of flows) {
      const c = Number(f.count) || 0;
      if (c > 0 && f.kind) counts[f.kind] = (counts[f.kind] || 0) + c;
    }
    S.msgWindow.push({ t: d.t || serverTime(), interval, counts });
    while (S.msgWindow.length > 5) S.msgWindow.shift();
    renderRates();
    spawnDots(flows, interval);
  }

  function renderRates() {
    let ms = 0; const sum = {};
    for (const w of S.msgWindow) { ms += w.interval; for (const k in w.counts) sum[k] = (sum[k] || 0) + w.counts[k]; }
    for (const [k, e] of legendEls) setText(e.rate, fmtRate(ms ? (sum[k] || 0) * 1000 / ms : 0));
  }

  function spawnDots(flows, interval) {
    if (!G.pos.size || document.hidden) return;
    const now = performance.now();
    // drop finished dots first so the budget is honest
    pruneDots(now);
    let budget = MAX_DOTS - dots.length;
    if (budget <= 0) return;
    const usable = flows.filter(f => f && S.showKind[f.kind] && KIND_COLOR[f.kind] && (Number(f.count) || 0) > 0
      && G.pos.has(f.from) && G.pos.has(f.to) && f.from !== f.to);
    usable.sort((x, y) => (KIND_PRIORITY[x.kind] ?? 99) - (KIND_PRIORITY[y.kind] ?? 99));
    // first pass: one dot per flow (so every flow shows), second pass: extra dots
    for (let pass = 0; pass < DOTS_PER_FLOW && budget > 0; pass++) {
      for (const f of usable) {
        if (budget <= 0) break;
        const count = Number(f.count);
        const hb = f.kind === 'heartbeat' || f.kind === 'heartbeat-reply';
        const k = Math.min(count, hb ? 1 : DOTS_PER_FLOW);
        if (pass >= k) continue;
        const per = count / k;
        const c = S.cuts.get(linkKey(f.from, f.to));
        const cutDir = c ? (f.from < f.to ? c.ab : c.ba) : false;
        const to = S.nodes.get(f.to);
        const dead = !!cutDir || !(to && to.up);
        dots.push({
          a: f.from, b: f.to, kind: f.kind, count: per, label: pass === 0 && count >= 10 ? count : 0,
          start: now + (pass / k) * interval + Math.random() * interval * 0.35,
          dur: DOT_MS * (0.9 + Math.random() * 0.2), dead: dead ? (cutDir ? 0.42 : 0.82) : 0, faint: hb,
        });
        budget--;
      }
    }
  }

  function pruneDots(now) {
    let w = 0;
    for (let i = 0; i < dots.length; i++) {
      const d = dots[i];
      const end = d.start + d.dur * (d.dead ? d.dead + 0.12 : 1);
      if (now < end) dots[w++] = d;
    }
    dots.length = w;
  }

  function sizeCanvas(c, w, hgt) {
    const dpr = Math.min(2, window.devicePixelRatio || 1);
    const W = Math.round(w * dpr), H = Math.round(hgt * dpr);
    if (c.width !== W || c.height !== H) { c.width = W; c.height = H; }
    c._dpr = dpr;
  }

  let dotsDrawn = false;
  function frame() {
    requestAnimationFrame(frame);
    const now = performance.now();
    if (!dots.length) {
      if (dotsDrawn) { dctx.setTransform(1, 0, 0, 1, 0, 0); dctx.clearRect(0, 0, dotsCanvas.width, dotsCanvas.height); dotsDrawn = false; }
      return;
    }
    pruneDots(now);
    const dpr = dotsCanvas._dpr || 1;
    dctx.setTransform(1, 0, 0, 1, 0, 0);
    dctx.clearRect(0, 0, dotsCanvas.width, dotsCanvas.height);
    dctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    dctx.font = '9.5px ' + getComputedFont();
    dctx.textBaseline = 'middle';
    const R = G.nodeR + 3;
    for (const d of dots) {
      if (now < d.start) continue;
      const pa = G.pos.get(d.a), pb = G.pos.get(d.b);
      if (!pa || !pb) continue;
      let p = (now - d.start) / d.dur;
      let alpha = d.faint ? 0.45 : 0.95;
      if (d.dead) {
        if (p > d.dead + 0.12) continue;
        if (p > d.dead) { alpha *= 1 - (p - d.dead) / 0.12; p = d.dead; }
      } else if (p > 1) continue;
      const e = p * (0.85 + 0.15 * p);   // nearly linear, a touch of acceleration
      const dx = pb.x - pa.x, dy = pb.y - pa.y, len = Math.hypot(dx, dy) || 1;
      const ux = dx / len, uy = dy / len;
      // each direction travels in its own lane (offset to the right of travel)
      const ox = -uy * 3.5, oy = ux * 3.5;
      const x = pa.x + ux * R + (dx - 2 * ux * R) * e + ox;
      const y = pa.y + uy * R + (dy - 2 * uy * R) * e + oy;
      const r = Math.min(6.5, 2.6 + Math.log2(Math.max(1, d.count)) * 0.75);
      dctx.globalAlpha = alpha;
      dctx.fillStyle = KIND_COLOR[d.kind];
      dctx.beginPath(); dctx.arc(x, y, r, 0, 6.2832); dctx.fill();
      if (d.dead && p >= d.dead) {
        dctx.strokeStyle = '#ff6b6b'; dctx.lineWidth = 1.2;
        dctx.beginPath(); dctx.arc(x, y, r + 4 * (1 - alpha), 0, 6.2832); dctx.stroke();
      }
      if (d.label) {
        dctx.fillStyle = '#c9d1d9';
        dctx.globalAlpha = alpha * 0.85;
        dctx.fillText(fmtRate(d.label), x + r + 2, y);
      }
    }
    dctx.globalAlpha = 1;
    dotsDrawn = true;
  }
  let fontCache = null;
  function getComputedFont() {
    if (!fontCache) fontCache = getComputedStyle(document.body).fontFamily || 'sans-serif';
    return fontCache;
  }

  // ------------------------------------------------------------------ chain + balances
  const chainEl = $('#chain');
  const blockEls = new Map(); // key height:hash → element
  const ENTRY_CAP = 40;      // rows per block in the DOM (plus any transfer this page submitted)

  function onChain(d) {
    noteServerT(d.t);
    const blocks = (Array.isArray(d.blocks) ? d.blocks : []).filter(b => b && Number.isFinite(b.height));
    blocks.sort((x, y) => y.height - x.height);           // newest first
    const byHeight = new Map(blocks.map(b => [b.height, b]));
    const want = [];
    for (const b of blocks) {
      const key = b.height + ':' + b.hash;
      let w = blockEls.get(key);
      if (!w) {
        const block = renderBlock(b);
        const linker = h('div', { class: 'linker' }, h('span'));
        w = { wrap: h('div', { class: 'block-wrap' }, block, linker), block, linker };
        blockEls.set(key, w);
        block.classList.add('fresh');
        setTimeout(() => block.classList.remove('fresh'), 1200);
      }
      want.push(w);
      // the connector under a block says whether its prev_hash is the hash of the block below it
      const below = byHeight.get(b.height - 1);
      const last = b === blocks[blocks.length - 1];
      const cls = last ? 'linker none' : !below ? 'linker gap' : below.hash === b.prev_hash ? 'linker ok' : 'linker bad';
      if (w.linker.className !== cls) {
        w.linker.className = cls;
        setText(w.linker.firstChild, last ? '' : !below ? 'gap' : below.hash === b.prev_hash ? 'prev_hash ✓' : `prev_hash ≠ hash of #${b.height - 1}`);
      }
    }
    const keep = new Set(want);
    for (const [k, w] of blockEls) if (!keep.has(w)) { w.wrap.remove(); blockEls.delete(k); }
    // put them in order with as few DOM moves as possible (usually: a few new blocks on top)
    let ref = chainEl.firstChild;
    for (const w of want) {
      if (ref === w.wrap) { ref = ref.nextSibling; continue; }
      chainEl.insertBefore(w.wrap, ref);
    }
    while (ref) { const nx = ref.nextSibling; ref.remove(); ref = nx; }
    setText($('#chain-note'), blocks.length ? `height ${d.height != null ? d.height : blocks[0].height} · newest first` : 'no blocks yet');

    renderBalances(Array.isArray(d.balances) ? d.balances : [], d.total);
  }

  function renderBlock(b) {
    const entries = Array.isArray(b.entries) ? b.entries : [];
    const el = h('div', { class: 'block', 'data-height': b.height },
      h('div', { class: 'block-head' },
        h('span', { class: 'h', text: '#' + b.height }),
        h('span', { class: 'hash', title: b.hash || '', text: short(b.hash) }),
        h('span', { class: 'n', text: entries.length + (entries.length === 1 ? ' transfer' : ' transfers') }),
        h('span', { class: 'by' }, 'by ', h('b', { text: b.proposer != null ? 'node ' + b.proposer : '—' }))),
      h('div', { class: 'block-prev', title: b.prev_hash || '', text: '↳ prev ' + short(b.prev_hash) }));
    const ul = h('ul', { class: 'entries' });
    // rows as one HTML string (escaped): blocks can carry hundreds of transfers
    let html = '';
    if (!entries.length) html = '<li class="empty">empty batch</li>';
    let shown = 0, hidden = 0;
    for (let i = 0; i < entries.length; i++) {
      const t = entries[i];
      if (shown < ENTRY_CAP || S.myTransfers.has(t && t.id)) { html += entryHtml(t); shown++; } else hidden++;
    }
    if (hidden) html += `<li class="more">… ${hidden} more</li>`;
    ul.innerHTML = html;
    el.append(ul);
    return el;
  }

  const ESC = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
  function esc(v) { return String(v == null ? '' : v).replace(/[&<>"']/g, (c) => ESC[c]); }
  function entryHtml(t) {
    if (!t || typeof t !== 'object') return '';
    const out = String(t.outcome == null ? '' : t.outcome);
    const cls = out === 'applied' ? 'applied' : out.startsWith('rejected') ? 'rejected' : out.startsWith('duplicate') ? 'duplicate' : '';
    // one line of plain monospace text per transfer (inline spans only: cheap to lay out)
    const rawId = String(t.id == null ? '' : t.id);
    const shownId = rawId.length > 12 ? rawId.slice(0, 11) + '…' : rawId;
    const mv = `${t.from} → ${t.to}`;
    const o = esc(out);
    return `<li data-transfer-id="${esc(rawId)}" title="${esc(rawId)}: ${esc(mv)}, ${esc(t.amount)} · ${o}"${S.myTransfers.has(t.id) ? ' class="mine"' : ''}>` +
      `<span class="tid">${esc(shownId.padEnd(12))}</span> ${esc(mv.padEnd(7))} <span class="amt">${esc(String(t.amount).padStart(6))}</span>  <span class="out ${cls}">${o}</span></li>`;
  }

  const balRows = new Map();
  let balKey = '';
  function renderBalances(list, total) {
    const box = $('#balances');
    const key = list.map(b => b.account).join(',');
    if (key !== balKey) {
      balKey = key; box.textContent = ''; balRows.clear();
      for (const b of list) {
        const bar = h('span');
        const val = h('span', { class: 'val' });
        box.append(h('span', { class: 'acct' }, 'account ', h('b', { text: String(b.account) })), h('div', { class: 'bar' }, bar), val);
        balRows.set(b.account, { bar, val });
      }
    }
    let max = 1;
    for (const b of list) max = Math.max(max, Number(b.balance) || 0);
    for (const b of list) {
      const r = balRows.get(b.account); if (!r) continue;
      const v = Number(b.balance) || 0;
      r.bar.style.width = Math.max(0, Math.min(100, v / max * 100)).toFixed(1) + '%';
      setText(r.val, String(b.balance));
      r.val.classList.toggle('neg', v < 0);
    }
    S.lastChainTotal = total;
    renderBalanceTotal();
  }
  function renderBalanceTotal() {
    const el = $('#balances-total');
    if (S.lastChainTotal == null) { el.textContent = ''; return; }
    const exp = S.lastSafety && S.lastSafety.expected_total;
    el.textContent = '';
    el.append('total ', h('b', { text: String(S.lastChainTotal) }));
    if (exp != null) el.append(' ', h('span', { class: exp === S.lastChainTotal ? 'ok' : 'bad', text: exp === S.lastChainTotal ? '✓ conserved' : `≠ ${exp}` }));
  }

  // ------------------------------------------------------------------ stats + chart
  const chart = $('#chart');
  const cctx = chart.getContext('2d');
  function onStats(d) {
    noteServerT(d.t);
    const p = {
      t: d.t || serverTime(), tps: numOrNull(d.committed_per_s),
      p50: numOrNull(d.latency_ms_p50), p99: numOrNull(d.latency_ms_p99),
    };
    S.stats.push(p);
    if (S.stats.length > HIST_MAX) S.stats.splice(0, S.stats.length - HIST_MAX);
    setText($('#now-tps'), fmtRate(p.tps));
    setText($('#now-p50'), fmtMs(p.p50));
    setText($('#now-p99'), fmtMs(p.p99));
    setText($('#cluster-tps'), p.tps == null ? '–' : fmtRate(p.tps) + ' tx/s');
    drawChart();
  }
  function numOrNull(x) { return typeof x === 'number' && isFinite(x) ? x : null; }

  function addLeaderMark(t, id) {
    const last = S.leaderMarks[S.leaderMarks.length - 1];
    if (last && last.id === id && Math.abs(last.t - t) < 3000) return;
    S.leaderMarks.push({ t, id });
    if (S.leaderMarks.length > MARK_MAX) S.leaderMarks.shift();
  }
  function openBand(t) {
    const last = S.faultBands[S.faultBands.length - 1];
    if (last && last.end == null) return;
    S.faultBands.push({ start: t, end: null, endAsked: null });
    if (S.faultBands.length > MARK_MAX) S.faultBands.shift();
  }
  function trackFaultFromState(faultNow, t) {
    S.faultNow = faultNow;
    const last = S.faultBands[S.faultBands.length - 1];
    const open = last && last.end == null;
    if (faultNow && !open) openBand(t);
    if (!faultNow && open) last.end = last.endAsked != null && last.endAsked <= t ? last.endAsked : t;
  }
  function faultLog(kind, t) {
    if (FAULT_START.has(kind)) openBand(t);
    if (FAULT_END.has(kind)) {
      const last = S.faultBands[S.faultBands.length - 1];
      if (last && last.end == null) {
        last.endAsked = t;
        if (!S.faultNow && S.stateCount > 0) last.end = t;   // state already says all is well
      }
    }
  }

  function drawChart() {
    const r = chart.getBoundingClientRect();
    if (r.width < 10 || r.height < 10) return;
    sizeCanvas(chart, r.width, r.height);
    const dpr = chart._dpr || 1;
    const W = r.width, H = r.height;
    const ctx = cctx;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, chart.width, chart.height);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const font = getComputedFont();
    const now = Math.max(S.serverNow, serverTime());
    // the window grows with the history we have: 1 minute at first, up to HIST_MS
    const first = S.stats.length ? S.stats[0].t : now;
    const span = Math.min(HIST_MS, Math.max(60000, Math.ceil((now - first) / 30000) * 30000));
    const t0 = now - span;
    const L = 46, Rm = 8, top1 = 10, split = Math.round(H * 0.5), bot2 = H - 18;
    const A = { x0: L, x1: W - Rm, y0: top1, y1: split - 10 };
    const B = { x0: L, x1: W - Rm, y0: split + 8, y1: bot2 };
    const X = (t) => A.x0 + (t - t0) / span * (A.x1 - A.x0);
    const pts = S.stats.filter(p => p.t >= t0 - 2000);

    // fault bands + leader marks (both plots)
    ctx.fillStyle = 'rgba(248,81,73,0.14)';
    for (const b of S.faultBands) {
      const e = b.end == null ? now : b.end;
      if (e < t0) continue;
      const xa = Math.max(A.x0, X(b.start)), xb = Math.min(A.x1, X(e));
      if (xb - xa < 1) { ctx.fillRect(xa, A.y0, 2, B.y1 - A.y0); continue; }
      ctx.fillRect(xa, A.y0, xb - xa, B.y1 - A.y0);
    }
    ctx.font = '10px ' + font;
    ctx.textBaseline = 'top';
    let lastLabelX = -1e9;
    for (const m of S.leaderMarks) {
      if (m.t < t0) continue;
      const x = Math.round(X(m.t)) + 0.5;
      ctx.strokeStyle = 'rgba(188,140,255,0.8)'; ctx.lineWidth = 1; ctx.setLineDash([3, 3]);
      ctx.beginPath(); ctx.moveTo(x, A.y0); ctx.lineTo(x, B.y1); ctx.stroke(); ctx.setLineDash([]);
      ctx.fillStyle = '#cfb3ff';
      if (Math.abs(x - lastLabelX) < 20) continue;
      lastLabelX = x;
      if (x + 22 > A.x1) { ctx.textAlign = 'right'; ctx.fillText('L' + m.id, x - 3, A.y0); ctx.textAlign = 'left'; }
      else ctx.fillText('L' + m.id, x + 3, A.y0);
    }

    // throughput (linear)
    let maxT = 0;
    for (const p of pts) if (p.tps != null) maxT = Math.max(maxT, p.tps);
    const yMaxT = niceCeil(Math.max(10, maxT * 1.1));
    const YT = (v) => A.y1 - v / yMaxT * (A.y1 - A.y0);
    gridY(ctx, A, [0, yMaxT / 2, yMaxT], YT, (v) => fmtRate(v), font);
    ctx.fillStyle = '#8b98a9'; ctx.textBaseline = 'bottom'; ctx.textAlign = 'left';
    ctx.fillText('tx/s', A.x0 + 4, A.y0 + 12);
    series(ctx, pts, 'tps', X, YT, '#58a6ff', 1.8, A.y1);

    // latency (log scale, 0.1 ms … ≥1 s)
    let maxL = 1;
    for (const p of pts) { if (p.p99 != null) maxL = Math.max(maxL, p.p99); if (p.p50 != null) maxL = Math.max(maxL, p.p50); }
    const lmin = 0.1, lmax = Math.pow(10, Math.ceil(Math.log10(Math.max(10, maxL * 1.05))));
    const YL = (v) => B.y1 - (Math.log10(Math.max(lmin, v)) - Math.log10(lmin)) / (Math.log10(lmax) - Math.log10(lmin)) * (B.y1 - B.y0);
    const ticks = []; for (let v = 1; v <= lmax; v *= 10) ticks.push(v);
    gridY(ctx, B, ticks, YL, (v) => v >= 1000 ? (v / 1000) + ' s' : v + ' ms', font);
    ctx.fillStyle = '#8b98a9'; ctx.textBaseline = 'bottom'; ctx.textAlign = 'left';
    ctx.fillText('commit latency', B.x0 + 4, B.y0 + 12);
    series(ctx, pts, 'p99', X, YL, '#e3a03a', 1.4, null);
    series(ctx, pts, 'p50', X, YL, '#2dd4bf', 1.6, null);

    // x axis
    ctx.fillStyle = '#5d6a7b'; ctx.textBaseline = 'top'; ctx.font = '10px ' + font;
    const step = span <= 60000 ? 15000 : span <= 150000 ? 30000 : 60000;
    for (let back = span; back >= 0; back -= step) {
      const x = X(now - back);
      ctx.textAlign = back === 0 ? 'right' : back === span ? 'left' : 'center';
      const sec = Math.round(back / 1000);
      const label = back === 0 ? 'now' : sec % 60 === 0 ? '−' + sec / 60 + ' min' : sec < 60 ? '−' + sec + ' s' : '−' + Math.floor(sec / 60) + ':' + String(sec % 60).padStart(2, '0');
      ctx.fillText(label, x, bot2 + 4);
    }
    ctx.textAlign = 'left';
    if (!pts.length) {
      ctx.fillStyle = '#5d6a7b'; ctx.textAlign = 'center'; ctx.textBaseline = 'middle'; ctx.font = '12px ' + font;
      ctx.fillText('waiting for stats…', (A.x0 + A.x1) / 2, H / 2);
      ctx.textAlign = 'left';
    }
  }
  function niceCeil(v) {
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }
  function gridY(ctx, A, vals, Y, fmt, font) {
    ctx.font = '10px ' + font; ctx.textAlign = 'right'; ctx.textBaseline = 'middle';
    for (const v of vals) {
      const y = Math.round(Y(v)) + 0.5;
      ctx.strokeStyle = '#222c38'; ctx.lineWidth = 1;
      ctx.beginPath(); ctx.moveTo(A.x0, y); ctx.lineTo(A.x1, y); ctx.stroke();
      ctx.fillStyle = '#5d6a7b'; ctx.fillText(fmt(v), A.x0 - 5, y);
    }
    ctx.textAlign = 'left';
  }
  function series(ctx, pts, key, X, Y, color, width, fillTo) {
    ctx.strokeStyle = color; ctx.lineWidth = width; ctx.lineJoin = 'round';
    let run = [];
    const flush = () => {
      if (!run.length) return;
      if (fillTo != null && run.length > 1) {
        ctx.beginPath(); ctx.moveTo(run[0][0], fillTo);
        for (const [x, y] of run) ctx.lineTo(x, y);
        ctx.lineTo(run[run.length - 1][0], fillTo); ctx.closePath();
        ctx.fillStyle = color + '22'; ctx.fill();
      }
      ctx.beginPath(); ctx.moveTo(run[0][0], run[0][1]);
      for (const [x, y] of run) ctx.lineTo(x, y);
      if (run.length === 1) { ctx.arc(run[0][0], run[0][1], 1.5, 0, 6.3); ctx.fillStyle = color; ctx.fill(); }
      ctx.stroke(); run = [];
    };
    let prevT = null;
    for (const p of pts) {
      const v = p[key];
      if (v == null || (prevT != null && p.t - prevT > 5000)) flush();
      if (v != null) run.push([X(p.t), Y(v)]);
      prevT = p.t;
    }
    flush();
  }

  // ------------------------------------------------------------------ log
  const logEl = $('#log');
  const KIND_CLASS = {
    crashed: 'fault', severed: 'fault', partition: 'fault', node_down: 'fault',
    healed: 'recover', restarted: 'recover', caught_up: 'recover', node_up: 'recover',
    election_started: 'election', stepped_down: 'election', leader_changed: 'leader', became_leader: 'leader',
    transfer: 'transfer',
  };
  function onLog(d) {
    noteServerT(d.t);
    const t = d.t || serverTime();
    const li = h('li', { class: KIND_CLASS[d.kind] || '', 'data-kind': d.kind || '' },
      h('span', { class: 'ts', title: new Date(t).toISOString(), text: fmtTime(t) }),
      h('span', { class: 'nd', title: d.node != null ? 'node ' + d.node : '', text: d.node != null ? String(d.node) : '' }),
      h('span', { class: 'tx', text: d.text || d.kind || '' }));
    logEl.prepend(li);
    while (logEl.children.length > LOG_MAX) logEl.lastElementChild.remove();
    if (d.kind === 'became_leader' && Number.isInteger(d.node)) addLeaderMark(t, d.node);
    faultLog(d.kind, t);
    if (FAULT_START.has(d.kind) || FAULT_END.has(d.kind) || d.kind === 'became_leader') drawChart();
  }

  // ------------------------------------------------------------------ safety
  const safetyEl = $('#safety');
  function onSafety(d) {
    noteServerT(d.t);
    S.lastSafety = d; S.lastSafetyAt = Date.now();
    renderSafety();
    renderBalanceTotal();
  }
  function renderSafety() {
    const d = S.lastSafety; if (!d) return;
    const ok = d.ok === true;
    safetyEl.classList.remove('unknown');
    setAttr(safetyEl, 'data-ok', ok ? 'true' : 'false');
    const nodes = Array.isArray(d.nodes_checked) ? d.nodes_checked.join(',') : '?';
    const totalOk = d.total === d.expected_total;
    const parts = [];
    parts.push(d.chains_agree === false ? 'chains DISAGREE' : 'chains agree');
    if (d.total != null || d.expected_total != null) {
      parts.push(totalOk ? `total conserved (${d.total} = ${d.expected_total})` : `total NOT conserved (${d.total} ≠ ${d.expected_total})`);
    }
    parts.push(`checked up to height ${d.checked_height != null ? d.checked_height : '?'} on nodes ${nodes}`);
    if (!ok && d.detail) parts.push(d.detail);
    safetyEl.textContent = '';
    safetyEl.append(h('span', { class: 'sym', text: ok ? '✓ ' : '✗ ' }), parts.join(' · '));
    const age = (Date.now() - S.lastSafetyAt) / 1000;
    if (age > 6) safetyEl.append(h('span', { class: 'stale', text: ` · last check ${Math.round(age)} s ago` }));
    safetyEl.title = d.detail || '';
  }

  // ------------------------------------------------------------------ actions
  let statusSeq = 0;
  function post(url, body, label, quiet) {
    // quiet: the caller shows the reply itself (the transfer form has its own result line)
    const seq = quiet ? -1 : ++statusSeq;
    if (!quiet) showStatus(`${label}…`, '', seq);
    return fetch(url, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
    }).then(async (res) => {
      let j = null;
      const txt = await res.text();
      try { j = JSON.parse(txt); } catch (e) { j = { ok: false, error: `HTTP ${res.status}: ${txt.slice(0, 200) || res.statusText}` }; }
      if (!j || typeof j !== 'object') j = { ok: false, error: `HTTP ${res.status}` };
      if (!res.ok && j.ok !== false) j = { ok: false, error: j.error || `HTTP ${res.status}` };
      if (!quiet) showReply(label, j, seq);
      return j;
    }).catch((e) => {
      const j = { ok: false, error: 'could not reach the dashboard server (' + (e && e.message || e) + ')' };
      if (!quiet) showReply(label, j, seq);
      return j;
    });
  }
  function replyNodes(j) {
    const frag = document.createDocumentFragment();
    if (j.ok) frag.append(String(j.text || 'done'));
    else {
      frag.append(String(j.error || 'failed'));
      if (j.command) frag.append(' — run: ', h('code', { text: String(j.command) }));
    }
    return frag;
  }
  function showStatus(text, cls, seq) {
    const el = $('#action-status');
    if (seq != null && seq !== statusSeq) return;
    el.className = 'status ' + (cls || '');
    el.textContent = '';
    el.append(h('span', { class: 'when', text: fmtTime(Date.now()) + ' ' }), text);
  }
  function showReply(label, j, seq) {
    const el = $('#action-status');
    el.className = 'status ' + (j.ok ? 'ok' : 'err');
    el.textContent = '';
    el.append(h('span', { class: 'when', text: fmtTime(Date.now()) + ' ' }), (j.ok ? '✓ ' : '✗ ') + label + ': ', replyNodes(j));
  }
  function act(btn, url, body, label) {
    btn.classList.add('busy');
    post(url, body, label).finally(() => btn.classList.remove('busy'));
  }

  // transfer form
  $('#transfer-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const res = $('#transfer-result');
    const fv = $('#transfer-from').value.trim(), tv = $('#transfer-to').value.trim(), av = $('#transfer-amount').value.trim();
    if (!fv || !tv || !av) {
      res.className = 'result err';
      res.textContent = 'fill in from, to and amount (positive whole numbers)';
      return;
    }
    const num = (v) => (/^-?\d+$/.test(v) && Number.isSafeInteger(Number(v)) ? Number(v) : v);
    const body = { from: num(fv), to: num(tv), amount: num(av) };
    res.className = 'result';
    res.textContent = `sending ${fv} → ${tv}, ${av}…`;
    const btn = $('#transfer-submit');
    btn.classList.add('busy');
    const mySeq = ++transferSeq;
    post('/api/transfer', body, `transfer ${fv} → ${tv} (${av})`, true).then((j) => {
      if (j && j.ok) { const m = /\bt-[0-9a-z-]+/i.exec(j.text || ''); if (m) rememberMine(m[0]); if (j.id) rememberMine(j.id); }
      if (mySeq !== transferSeq) return;
      res.className = 'result ' + (j.ok ? 'ok' : 'err');
      res.textContent = '';
      res.append(replyNodes(j));
    }).finally(() => { if (mySeq === transferSeq) btn.classList.remove('busy'); });
  });
  let transferSeq = 0;
  function rememberMine(id) {
    S.myTransfers.add(id);
    if (S.myTransfers.size > 100) S.myTransfers.delete(S.myTransfers.values().next().value);
  }

  // ------------------------------------------------------------------ partition presets
  function presetCuts(name) {
    const ids = S.ids.slice();
    const n = ids.length;
    if (n < 3) return { error: 'needs at least 3 nodes' };
    const leader = S.leader != null ? S.leader : S.lastLeader;
    if (leader == null || !ids.includes(leader)) return { error: 'no leader known yet' };
    const li = ids.indexOf(leader);
    const others = ids.filter(x => x !== leader);
    const up = (id) => { const x = S.nodes.get(id); return !!(x && x.up); };
    const after = (k) => ids[(li + k) % n];
    const pairs = [];
    const all = [];
    for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++) all.push([ids[i], ids[j]]);
    if (name === 'quorum-loss') {
      // hub = the first live follower after the leader; everything not touching the hub is cut
      let hub = null;
      for (let k = 1; k < n; k++) if (up(after(k))) { hub = after(k); break; }
      if (hub == null) hub = after(1);
      for (const [a, b] of all) if (a !== hub && b !== hub) pairs.push([a, b]);
      return { cuts: pairs, text: `Quorum loss: only node ${hub} stays connected to everyone; leader ${leader} reaches only ${hub}, so it loses its quorum and ${hub} must take over.` };
    }
    if (name === 'constrained-election') {
      // hub = the live follower with the lowest height (the least up to date that can still win)
      let hub = null, hubH = Infinity;
      for (let k = 1; k < n; k++) {
        const id = after(k), x = S.nodes.get(id);
        if (!x || !x.up) continue;
        const hh = Number.isFinite(x.height) ? x.height : Infinity;
        if (hub == null || hh < hubH) { hub = id; hubH = hh; }
      }
      if (hub == null) hub = after(1);
      for (const [a, b] of all) {
        if (a === leader || b === leader) pairs.push([a, b]);
        else if (a !== hub && b !== hub) pairs.push([a, b]);
      }
      return { cuts: pairs, text: `Constrained election: leader ${leader} is cut from everyone; the others reach only node ${hub}, the one node that can gather a majority.` };
    }
    if (name === 'chained') {
      if (n >= 7) return { error: `with ${n} nodes in a line no node reaches a majority (${Math.floor(n / 2) + 1}), so the cluster cannot make progress` };
      const line = []; for (let k = 0; k < n; k++) line.push(after(k));
      const pos = new Map(line.map((id, i) => [id, i]));
      for (const [a, b] of all) if (Math.abs(pos.get(a) - pos.get(b)) !== 1) pairs.push([a, b]);
      return { cuts: pairs, text: `Chained: ${line.join(' – ')}; only neighbours in the line stay connected, so only a middle node reaches a majority.` };
    }
    if (name === 'isolate-leader') {
      for (const o of others) pairs.push(leader < o ? [leader, o] : [o, leader]);
      return { cuts: pairs, text: `Isolate the leader: every link of node ${leader} is cut; the other ${n - 1} elect a new leader.` };
    }
    return { error: 'unknown preset' };
  }

  function refreshPresets() {
    for (const btn of document.querySelectorAll('[data-preset]')) {
      const name = btn.getAttribute('data-preset');
      const r = presetCuts(name);
      const disabled = !!r.error && name === 'chained' && S.ids.length >= 7;
      if (btn.disabled !== disabled) btn.disabled = disabled;
      btn.title = r.error ? r.error : r.text + ` (${r.cuts.length} links cut)`;
    }
  }

  function setPreview(keys) {
    S.preview = keys;
    renderLinks();
  }

  for (const btn of document.querySelectorAll('[data-preset]')) {
    const name = btn.getAttribute('data-preset');
    const explain = $('#preset-explain');
    const show = () => {
      const r = presetCuts(name);
      explain.textContent = r.error ? r.error : r.text;
      setPreview(r.cuts ? new Set(r.cuts.map(([a, b]) => linkKey(a, b))) : null);
    };
    const hide = () => { explain.innerHTML = '&nbsp;'; setPreview(null); };
    btn.addEventListener('mouseenter', show);
    btn.addEventListener('focus', show);
    btn.addEventListener('mouseleave', hide);
    btn.addEventListener('blur', hide);
    btn.addEventListener('click', () => {
      const r = presetCuts(name);
      if (r.error) { showReply(name, { ok: false, error: r.error }); return; }
      const cuts = r.cuts.map(([a, b]) => (a < b ? [a, b] : [b, a]));
      for (const [a, b] of cuts) S.pendingLinks.set(a + '-' + b, performance.now() + 3000);
      renderLinks();
      act(btn, '/api/links', { cut: cuts }, name.replace(/-/g, ' '));
    });
  }
  $('#heal-all').addEventListener('click', (ev) => act(ev.currentTarget, '/api/heal', { all: true }, 'heal all'));
  // the chained preset is disabled at N≥7; the title on a disabled button does not show in all browsers,
  // so the explanation line also reacts to the pointer over the row
  $('.presets .row').addEventListener('mousemove', (ev) => {
    const b = ev.target.closest && ev.target.closest('[data-preset]');
    if (b && b.disabled) $('#preset-explain').textContent = b.title;
  });

  // ------------------------------------------------------------------ boot
  buildLegend();
  const ro = new ResizeObserver(() => { if (S.ids.length) computeLayout(); drawChart(); });
  ro.observe(wrap);
  ro.observe($('#chart-wrap'));
  setInterval(() => {
    drawChart();
    if (S.lastSafety && Date.now() - S.lastSafetyAt > 6000) renderSafety();
    // if no state for a while although the stream claims to be open, say so
  }, 1000);
  requestAnimationFrame(frame);
  connect();
})();
