"""`GET /dashboard`: one self-contained page (no CDN, no external files) that
polls `admin/stats` (relative: it works behind an API Gateway stage prefix) with
the admin key and draws inline SVG charts."""

DASHBOARD_HTML = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>shop - operations dashboard</title>
<style>
  :root { --fg:#1d2733; --muted:#6b7785; --line:#e3e8ee; --bg:#f6f8fa; --card:#fff;
          --p50:#2f7ed8; --p99:#d9534f; --prod:#2e9e5b; --search:#8e5bd0; --err:#d9534f; --req:#9aa7b4; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--fg); background:var(--bg); }
  header { display:flex; flex-wrap:wrap; gap:12px; align-items:center; padding:12px 20px; background:var(--card); border-bottom:1px solid var(--line); }
  header h1 { font-size:17px; margin:0 12px 0 0; }
  header form { display:flex; gap:6px; align-items:center; }
  header input { width:260px; padding:5px 8px; border:1px solid var(--line); border-radius:4px; font:inherit; }
  header button { padding:5px 12px; border:1px solid var(--p50); background:var(--p50); color:#fff; border-radius:4px; font:inherit; cursor:pointer; }
  #status { color:var(--muted); margin-left:auto; }
  #status.error { color:var(--err); font-weight:600; }
  main { padding:16px 20px; max-width:1280px; }
  .tiles { display:grid; grid-template-columns:repeat(auto-fill, minmax(150px, 1fr)); gap:10px; margin-bottom:16px; }
  .tile { background:var(--card); border:1px solid var(--line); border-radius:6px; padding:10px 12px; }
  .tile .label { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.03em; }
  .tile .value { font-size:24px; font-weight:600; margin-top:2px; white-space:nowrap; }
  .tile .sub { color:var(--muted); font-size:12px; }
  .charts { display:grid; grid-template-columns:repeat(auto-fill, minmax(380px, 1fr)); gap:12px; margin-bottom:16px; }
  .chart { background:var(--card); border:1px solid var(--line); border-radius:6px; padding:10px 12px; }
  .chart h2, .tables h2 { font-size:14px; margin:0 0 6px; }
  .legend { font-size:12px; color:var(--muted); }
  .legend span { display:inline-block; width:10px; height:3px; margin:0 4px 3px 10px; vertical-align:middle; }
  svg { width:100%; height:auto; display:block; }
  svg text { font-size:10px; fill:var(--muted); }
  .tables { display:grid; grid-template-columns:repeat(auto-fill, minmax(300px, 1fr)); gap:12px; }
  .tables section { background:var(--card); border:1px solid var(--line); border-radius:6px; padding:10px 12px; }
  table { border-collapse:collapse; width:100%; font-size:13px; }
  th, td { text-align:left; padding:3px 6px; border-bottom:1px solid var(--line); }
  td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
  .empty { color:var(--muted); }
  footer { color:var(--muted); font-size:12px; padding:0 20px 20px; }
</style>
</head>
<body>
<header>
  <h1>shop &middot; operations</h1>
  <form id="key-form" autocomplete="off">
    <label for="key">Admin key</label>
    <input id="key" type="password" placeholder="x-api-key of an admin plan">
    <button type="submit">Show</button>
  </form>
  <span id="status">Enter the admin key (or open /dashboard#key=...)</span>
</header>
<main>
  <div class="tiles">
    <div class="tile"><div class="label">Order latency p50</div><div class="value" id="order-p50">&mdash;</div><div class="sub">last <span class="window">5</span> min</div></div>
    <div class="tile"><div class="label">Order latency p99</div><div class="value" id="order-p99">&mdash;</div><div class="sub"><span id="order-latency-count">0</span> orders timed</div></div>
    <div class="tile"><div class="label">Orders created</div><div class="value" id="orders-created">&mdash;</div><div class="sub"><span id="orders-cancelled">0</span> cancelled</div></div>
    <div class="tile"><div class="label">Orders failed</div><div class="value" id="orders-failed">&mdash;</div><div class="sub">see codes below</div></div>
    <div class="tile"><div class="label">Cache hit rate</div><div class="value" id="cache-hit-rate">&mdash;</div><div class="sub">product <span id="product-hit-rate">&mdash;</span> &middot; search <span id="search-hit-rate">&mdash;</span></div></div>
    <div class="tile"><div class="label">Requests</div><div class="value" id="request-count">&mdash;</div><div class="sub"><span id="error-count">0</span> error responses</div></div>
    <div class="tile"><div class="label">Error rate (5xx)</div><div class="value" id="error-rate">&mdash;</div><div class="sub"><span id="errors-5xx">0</span> 5xx responses</div></div>
  </div>
  <div class="charts">
    <div class="chart"><h2>Order latency (ms)</h2>
      <div class="legend"><span style="background:var(--p50)"></span>p50<span style="background:var(--p99)"></span>p99</div>
      <svg id="chart-latency" viewBox="0 0 420 170" role="img" aria-label="order latency p50 and p99 over time"></svg></div>
    <div class="chart"><h2>Cache hit rate</h2>
      <div class="legend"><span style="background:var(--prod)"></span>product<span style="background:var(--search)"></span>search</div>
      <svg id="chart-cache" viewBox="0 0 420 170" role="img" aria-label="cache hit rate over time"></svg></div>
    <div class="chart"><h2>Error rate (5xx share of requests)</h2>
      <div class="legend"><span style="background:var(--err)"></span>5xx rate<span style="background:var(--req)"></span>requests/s (scaled)</div>
      <svg id="chart-errors" viewBox="0 0 420 170" role="img" aria-label="error rate over time"></svg></div>
  </div>
  <div class="tables">
    <section><h2>Errors by code</h2><table id="errors-by-code"><tbody><tr><td class="empty">none</td></tr></tbody></table></section>
    <section><h2>Failed orders by code</h2><table id="failed-by-code"><tbody><tr><td class="empty">none</td></tr></tbody></table></section>
    <section style="grid-column:1/-1"><h2>Latency by route</h2><table id="routes"><tbody><tr><td class="empty">no requests yet</td></tr></tbody></table></section>
  </div>
</main>
<footer>Data: <code>GET admin/stats</code> beside this page (admin key), refreshed every 5 s. Source <span id="source">&mdash;</span>: <code>redis</code> on the local stack covers every API and poller process; behind API Gateway it is <code>process</code>, the one execution environment that answered (the fleet's numbers are on the CloudWatch dashboard).</footer>
<script>
(function () {
  "use strict";
  var POLL_MS = 5000, STEP = 5, WINDOW = 300;
  var key = "";
  var m = /(?:^#|&)key=([^&]*)/.exec(location.hash || "");
  if (m) { key = decodeURIComponent(m[1]); }
  else { try { key = sessionStorage.getItem("shop-admin-key") || ""; } catch (e) {} }
  var $ = function (id) { return document.getElementById(id); };
  $("key").value = key;

  function ms(v) { return v == null ? "\u2014" : (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)) + " ms"; }
  function pct(v) { return v == null ? "\u2014" : (v * 100).toFixed(1) + "%"; }
  function int(v) { return v == null ? "\u2014" : String(v); }
  function set(id, text, raw) { var el = $(id); el.textContent = text; el.setAttribute("data-value", raw == null ? "" : String(raw)); }
  function status(text, isError) { var el = $("status"); el.textContent = text; el.className = isError ? "error" : ""; }

  var SVGNS = "http://www.w3.org/2000/svg";
  function el(name, attrs, parent) {
    var node = document.createElementNS(SVGNS, name);
    for (var k in attrs) { node.setAttribute(k, attrs[k]); }
    if (parent) { parent.appendChild(node); }
    return node;
  }
  // lines: [{values: [...nulls allowed], color}], fmt: y label formatter
  function chart(svg, t, lines, yMax, fmt) {
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    var W = 420, H = 170, L = 46, R = 8, T = 8, B = 20, w = W - L - R, h = H - T - B;
    var n = t.length, x = function (i) { return L + (n <= 1 ? w : i * w / (n - 1)); };
    var y = function (v) { return T + h - Math.min(v, yMax) / yMax * h; };
    [0, 0.5, 1].forEach(function (f) {
      var yy = T + h - f * h;
      el("line", {x1: L, x2: W - R, y1: yy, y2: yy, stroke: "#e3e8ee"}, svg);
      el("text", {x: L - 4, y: yy + 3, "text-anchor": "end"}, svg).textContent = fmt(yMax * f);
    });
    var span = n > 1 ? t[n - 1] - t[0] : 0;
    [[0, "-" + Math.round(span / 60) + " min"], [Math.floor((n - 1) / 2), "-" + (span / 120).toFixed(1) + " min"], [n - 1, "now"]].forEach(function (p) {
      el("text", {x: x(p[0]), y: H - 5, "text-anchor": p[0] === 0 ? "start" : p[0] === n - 1 ? "end" : "middle"}, svg).textContent = p[1];
    });
    lines.forEach(function (line) {
      var d = "", pen = false, pts = 0;
      line.values.forEach(function (v, i) {
        if (v == null) { pen = false; return; }
        d += (pen ? "L" : "M") + x(i).toFixed(1) + "," + y(v).toFixed(1);
        pen = true; pts++;
        var prev = line.values[i - 1], next = line.values[i + 1];
        if (prev == null && next == null) { el("circle", {cx: x(i), cy: y(v), r: 2, fill: line.color}, svg); }
      });
      if (line.bars) {
        line.values.forEach(function (v, i) {
          if (v) { el("rect", {x: x(i) - 2, y: y(v), width: 4, height: T + h - y(v), fill: line.color, opacity: 0.5}, svg); }
        });
      } else if (pts) {
        el("path", {d: d, fill: "none", stroke: line.color, "stroke-width": 1.8, "stroke-linejoin": "round"}, svg);
      }
    });
  }
  function niceMax(values, floor) {
    var max = floor;
    values.forEach(function (v) { if (v != null && v > max) { max = v; } });
    var mag = Math.pow(10, Math.floor(Math.log(max) / Math.LN10));
    return [1, 2, 2.5, 5, 10].map(function (f) { return f * mag; }).filter(function (c) { return c >= max; })[0];
  }
  function table(id, head, rows) {
    var tb = $(id);
    tb.innerHTML = "";
    if (!rows.length) { tb.innerHTML = "<tbody><tr><td class='empty'>none</td></tr></tbody>"; return; }
    var thead = tb.createTHead().insertRow();
    head.forEach(function (hd, i) { var th = document.createElement("th"); th.textContent = hd; if (i) { th.className = "num"; } thead.appendChild(th); });
    var body = tb.createTBody();
    rows.forEach(function (r) {
      var tr = body.insertRow();
      r.forEach(function (c, i) { var td = tr.insertCell(); td.textContent = c; if (i) { td.className = "num"; } });
    });
  }

  function render(s) {
    var lat = s.orders.latency_ms;
    set("order-p50", ms(lat.p50), lat.p50);
    set("order-p99", ms(lat.p99), lat.p99);
    set("order-latency-count", int(lat.count), lat.count);
    set("orders-created", int(s.orders.created), s.orders.created);
    set("orders-cancelled", int(s.orders.cancelled), s.orders.cancelled);
    set("orders-failed", int(s.orders.failed), s.orders.failed);
    set("cache-hit-rate", pct(s.cache.hit_rate), s.cache.hit_rate);
    set("product-hit-rate", pct(s.cache.product.hit_rate), s.cache.product.hit_rate);
    set("search-hit-rate", pct(s.cache.search.hit_rate), s.cache.search.hit_rate);
    set("request-count", int(s.requests.count), s.requests.count);
    set("error-count", int(s.requests.errors), s.requests.errors);
    set("errors-5xx", int(s.requests.errors_5xx), s.requests.errors_5xx);
    set("error-rate", pct(s.requests.error_rate), s.requests.error_rate);
    $("source").textContent = s.source;
    Array.prototype.forEach.call(document.querySelectorAll(".window"), function (e) { e.textContent = Math.round(s.window_seconds / 60); });

    var se = s.series, step = se.step_seconds;
    var latMax = niceMax(se.order_p99_ms, 1);
    chart($("chart-latency"), se.t, [{values: se.order_p50_ms, color: "#2f7ed8"}, {values: se.order_p99_ms, color: "#d9534f"}],
          latMax, function (v) { return v >= 10 ? v.toFixed(0) : v.toFixed(1); });
    chart($("chart-cache"), se.t, [{values: se.product_hit_rate, color: "#2e9e5b"}, {values: se.search_hit_rate, color: "#8e5bd0"}],
          1, function (v) { return Math.round(v * 100) + "%"; });
    var rateMax = niceMax(se.error_rate, 0.01);
    var rps = se.requests.map(function (r) { return r / step; });
    var rpsMax = Math.max.apply(null, rps.concat([1]));
    chart($("chart-errors"), se.t, [{values: rps.map(function (r) { return r / rpsMax * rateMax; }), color: "#9aa7b4", bars: true},
                                    {values: se.error_rate, color: "#d9534f"}],
          rateMax, function (v) { return (v * 100).toFixed(v * 100 < 10 ? 1 : 0) + "%"; });

    table("errors-by-code", ["code", "count"], Object.keys(s.requests.errors_by_code).sort().map(function (c) { return [c, s.requests.errors_by_code[c]]; }));
    table("failed-by-code", ["code", "count"], Object.keys(s.orders.failed_by_code).sort().map(function (c) { return [c, s.orders.failed_by_code[c]]; }));
    table("routes", ["route", "requests", "p50", "p99"], Object.keys(s.routes).map(function (r) {
      var x = s.routes[r]; return [r, x.count, ms(x.p50), ms(x.p99)];
    }));
  }

  var timer = null;
  function poll() {
    if (timer) { clearTimeout(timer); timer = null; }
    if (!key) { status("Enter the admin key (or open /dashboard#key=...)", true); return; }
    fetch("admin/stats?window=" + WINDOW + "&step=" + STEP, {headers: {"x-api-key": key}, cache: "no-store"})
      .then(function (r) {
        return r.json().then(function (body) {
          if (!r.ok) { throw new Error((body.error && body.error.code || r.status) + ": " + (body.error && body.error.message || "")); }
          return body;
        });
      })
      .then(function (s) { render(s); status("Updated " + new Date().toLocaleTimeString() + " (" + s.source + ")", false); document.body.setAttribute("data-loaded", "true"); })
      .catch(function (e) { status("Could not load /admin/stats - " + e.message, true); })
      .then(function () { timer = setTimeout(poll, POLL_MS); });
  }
  $("key-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    key = $("key").value.trim();
    try { sessionStorage.setItem("shop-admin-key", key); } catch (e) {}
    poll();
  });
  poll();
})();
</script>
</body>
</html>
"""
