/* evalkit report: draws the page's figures and tables from the data embedded in it (#evalkit-data).
   No network: plotly.js is inlined above this script. When everything is drawn, <body data-ready="1">;
   a drawing error sets data-error (the browser test reads both). */
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("evalkit-data").textContent);

  function bytes(b64) {
    var s = atob(b64), out = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out.buffer;
  }
  var TYPES = {f8: Float64Array, i4: Int32Array, u2: Uint16Array, u1: Uint8Array};
  function array(col) { return new TYPES[col.dtype](bytes(col.b64)); }
  function strings(col) {  // dictionary-coded: value = heads[h[i]] + tails[t[i]]
    var h = array(col.h), t = array(col.t), out = new Array(h.length);
    for (var i = 0; i < h.length; i++) out[i] = col.heads[h[i]] + col.tails[t[i]];
    return out;
  }
  var S = {}, N = {}, V = {};
  Object.keys(D.strings).forEach(function (k) { S[k] = strings(D.strings[k]); });
  Object.keys(D.numbers).forEach(function (k) { N[k] = array(D.numbers[k]); });
  Object.keys(D.values).forEach(function (k) { V[k] = array(D.values[k]); });
  window.evalkitData = {strings: S, numbers: N, values: V, raw: D};

  function fmt(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return "";
    if (Number.isInteger(v)) return String(v);
    return String(Number(v.toPrecision(6)));
  }
  function sci(v) {
    if (v === null || Number.isNaN(v)) return "";
    return Math.abs(v) >= 1e5 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(3) : fmt(v);
  }
  var SYMBOLS = D.symbols;
  var XLAB = {gflops_total: "total compute (GFLOPs)", samples_seen: "samples seen", epoch: "epoch"};

  function hover(metric, x) {
    return "<b>%{customdata[0]}</b><br>epoch %{customdata[1]}<br>%{customdata[2]}<br>" + metric +
      " = %{customdata[3]}<br>" + x + " = %{x:.4g}<extra>%{fullData.name}</extra>";
  }
  function custom(idx, key) {
    var v = V[key];
    return idx.map(function (i) { return [S.run[i], fmt(N.epoch[i]), S.checkpoint[i], fmt(v[i])]; });
  }
  function rgba(hex, a) {
    var n = parseInt(hex.slice(1), 16);
    return "rgba(" + (n >> 16 & 255) + "," + (n >> 8 & 255) + "," + (n & 255) + "," + a + ")";
  }

  function scatterTraces(f) {
    var key = f.task + "|" + f.metric, v = V[key], xs = N[f.x], traces = [];
    (f.groups || []).forEach(function (g) {
      traces.push({type: "scatter", mode: "markers", name: g.family + " " + g.arch, legendgroup: g.family,
        x: g.idx.map(function (i) { return xs[i]; }), y: g.idx.map(function (i) { return 1 - v[i]; }),
        customdata: custom(g.idx, key), hovertemplate: hover(f.metric, f.x),
        marker: {color: g.color, symbol: SYMBOLS[g.symbol], size: 8, opacity: 0.8, line: {width: 0.5, color: "#222"}}});
    });
    (f.frontier || []).forEach(function (g) {
      traces.push({type: "scatter", mode: "lines", name: g.family + " frontier", legendgroup: g.family,
        x: g.idx.map(function (i) { return xs[i]; }), y: g.idx.map(function (i) { return 1 - v[i]; }),
        customdata: custom(g.idx, key), hovertemplate: hover(f.metric, f.x),
        line: {color: g.color, width: 1.5, dash: "dot", shape: "hv"}});
    });
    (f.laws || []).forEach(function (l) {
      var cut = l.x.findIndex(function (x) { return x > l.x_fitted_max; });
      if (cut < 0) cut = l.x.length;
      if (l.low && l.high) {
        traces.push({type: "scatter", mode: "lines", x: l.x, y: l.low, line: {width: 0}, hoverinfo: "skip",
          showlegend: false, legendgroup: l.group});
        traces.push({type: "scatter", mode: "lines", x: l.x, y: l.high, line: {width: 0}, fill: "tonexty",
          fillcolor: rgba(l.color, 0.18), hoverinfo: "skip", name: l.group + " bootstrap band", legendgroup: l.group});
      }
      traces.push({type: "scatter", mode: "lines", name: l.group + " law: " + l.label, legendgroup: l.group,
        x: l.x.slice(0, cut + 1), y: l.error.slice(0, cut + 1), line: {color: l.color, width: 2.5}});
      if (cut < l.x.length - 1) {
        traces.push({type: "scatter", mode: "lines", name: l.group + " extrapolation", legendgroup: l.group,
          x: l.x.slice(cut), y: l.error.slice(cut), line: {color: l.color, width: 2, dash: "dash"}});
      }
    });
    var layout = {xaxis: {type: "log", title: {text: XLAB[f.x]}}, yaxis: {type: "log", title: {text: "error (1 - " + f.metric + ")"}}};
    return [traces, layout];
  }

  function curveTraces(f) {
    var key = f.task + "|" + f.metric, v = V[key], traces = [];
    f.runs.forEach(function (fam) {
      var x = [], y = [], cd = [];
      fam.runs.forEach(function (run) {
        run.forEach(function (i) { x.push(N.epoch[i]); y.push(v[i]); });
        cd = cd.concat(custom(run, key));
        x.push(null); y.push(null); cd.push(["", "", "", ""]);
      });
      traces.push({type: "scatter", mode: "lines+markers", name: fam.family, x: x, y: y, customdata: cd,
        hovertemplate: hover(f.metric, "epoch"), connectgaps: false,
        line: {color: fam.color, width: 1.2}, marker: {color: fam.color, size: 5}});
    });
    return [traces, {xaxis: {title: {text: "epoch"}}, yaxis: {title: {text: f.metric}}}];
  }

  function compareTraces(f) {
    var c = f.compare, lo = Math.min.apply(null, c.theirs.concat(c.ours)), hi = Math.max.apply(null, c.theirs.concat(c.ours));
    var pad = (hi - lo) * 0.05 + c.tol, a = lo - pad, b = hi + pad, traces = [];
    traces.push({type: "scatter", mode: "lines", x: [a, b], y: [a - c.tol, b - c.tol], line: {width: 0},
      hoverinfo: "skip", showlegend: false});
    traces.push({type: "scatter", mode: "lines", x: [a, b], y: [a + c.tol, b + c.tol], line: {width: 0},
      fill: "tonexty", fillcolor: "rgba(44,160,44,0.15)", name: "tolerance ±" + c.tol, hoverinfo: "skip"});
    traces.push({type: "scatter", mode: "lines", x: [a, b], y: [a, b], line: {color: "#555", width: 1, dash: "dot"},
      name: "ours = theirs", hoverinfo: "skip"});
    [false, true].forEach(function (beyond) {
      var idx = [];
      c.beyond.forEach(function (bb, i) { if (bb === beyond) idx.push(i); });
      if (!idx.length) return;
      traces.push({type: "scatter", mode: "markers", name: beyond ? "beyond tolerance" : "within tolerance",
        x: idx.map(function (i) { return c.theirs[i]; }), y: idx.map(function (i) { return c.ours[i]; }),
        customdata: idx.map(function (i) { return [c.name[i], c.epoch[i], fmt(c.ours[i]), fmt(c.theirs[i]), fmt(c.ours[i] - c.theirs[i])]; }),
        hovertemplate: "<b>%{customdata[0]}</b><br>epoch %{customdata[1]}<br>ours %{customdata[2]}<br>theirs %{customdata[3]}<br>diff %{customdata[4]}<extra></extra>",
        marker: {color: beyond ? "#d62728" : "#1f77b4", size: 7}});
    });
    return [traces, {xaxis: {title: {text: "theirs"}}, yaxis: {title: {text: "ours"}}}];
  }

  var BUILD = {scatter: scatterTraces, curves: curveTraces, compare: compareTraces};
  var timings = window.evalkitTimings = {start: performance.now(), figures: {}};
  function draw(f) {
    var div = document.getElementById(f.id), t0 = performance.now();
    if (!div || f.empty) return Promise.resolve();
    var tl = BUILD[f.kind](f), layout = tl[1];
    layout.title = {text: f.title, font: {size: 14}};
    layout.height = 440;
    layout.margin = {l: 70, r: 20, t: 40, b: 55};
    layout.legend = {font: {size: 10}};
    layout.hovermode = "closest";
    return Plotly.newPlot(div, tl[0], layout, {responsive: true, displaylogo: false}).then(function (gd) {
      timings.figures[f.id] = performance.now() - t0;
      return gd;
    });
  }

  // tables: every <table class="sortable"> sorts by a header click (numbers as numbers, blanks last)
  function sortable(table) {
    var heads = table.tHead ? table.tHead.rows[0].cells : [];
    Array.prototype.forEach.call(heads, function (th, col) {
      th.addEventListener("click", function () {
        var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        var dir = th.dataset.dir === "asc" ? -1 : 1;
        Array.prototype.forEach.call(heads, function (h) { delete h.dataset.dir; });
        th.dataset.dir = dir === 1 ? "asc" : "desc";
        function key(r) { var c = r.cells[col]; return c.dataset.v !== undefined ? c.dataset.v : c.textContent; }
        rows.sort(function (a, b) {
          var x = key(a), y = key(b);
          if (x === "" || y === "") return x === y ? 0 : (x === "" ? 1 : -1);
          var nx = Number(x), ny = Number(y);
          if (!Number.isNaN(nx) && !Number.isNaN(ny)) return (nx - ny) * dir;
          return x.localeCompare(y) * dir;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  }

  function cell(tr, text, v) {
    var td = document.createElement("td");
    td.textContent = text;
    if (v !== undefined && v !== null && !Number.isNaN(v)) { td.dataset.v = String(v); td.className = "num"; }
    else if (v !== undefined) { td.dataset.v = ""; td.className = "num"; }
    tr.appendChild(td);
  }
  function dataTable(spec) {  // rows: checkpoint indices; columns: {label, string|number|value}
    var host = document.getElementById(spec.id);
    if (!host) return;
    var table = document.createElement("table"), head = table.createTHead().insertRow(), body = table.createTBody();
    table.className = "sortable data";
    spec.columns.forEach(function (c) { var th = document.createElement("th"); th.textContent = c.label; head.appendChild(th); });
    spec.rows.forEach(function (i) {
      var tr = body.insertRow();
      spec.columns.forEach(function (c) {
        if (c.string) cell(tr, S[c.string][i]);
        else if (c.number) cell(tr, sci(N[c.number][i]), N[c.number][i]);
        else { var v = V[c.value][i]; cell(tr, fmt(v), v); }
      });
    });
    host.appendChild(table);
  }

  function run() {
    (D.tables || []).forEach(dataTable);
    Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), sortable);
    return Promise.all(D.figures.map(draw));
  }
  function fail(e) { document.body.dataset.error = String(e && e.stack || e); console.error(e); }
  function start() {
    try { run().then(function () { document.body.dataset.ready = "1"; }, fail); } catch (e) { fail(e); }
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
