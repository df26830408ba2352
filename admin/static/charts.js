// Overview charts: processed/min, failed/min and backlog per actor over the last hour, drawn with
// uPlot (served by the console, see UPLOT.md). Data: GET /api/charts (same session cookie).
// A static file because the console's CSP forbids inline script. Times are UTC, written by
// window.fifoqTime (time.js) like every other time of the console, whatever the browser's zone.
(function () {
  "use strict";
  var root = document.getElementById("charts");
  if (!root || typeof window.uPlot === "undefined" || !window.fetch || !window.fifoqTime) {
    return;
  }
  var note = document.getElementById("charts-note");
  var COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"];
  var KINDS = [
    { key: "processed", title: "Processed per minute" },
    { key: "failed", title: "Failed attempts per minute" },
    { key: "backlog", title: "Backlog (open messages in the ledger)" }
  ];
  var plots = {};
  var T = window.fifoqTime;
  // Ticks fall on UTC minutes and hours, labelled "HH:MM" (UTC); the legend shows the full time.
  function utcDate(ts) { return window.uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); }
  var X_SERIES = { label: "UTC", value: function (u, ts) { return ts === null ? "--" : T.text(ts); } };
  var X_AXIS = { values: function (u, splits) { return splits.map(function (ts) { return T.hhmm(ts); }); } };

  function say(text) {
    if (note) { note.textContent = text; }
  }

  function draw(data) {
    if (!data.available) { say(data.note); return; }
    var xs = data.minutes.map(function (m) { return Date.parse(m) / 1000; });
    var rows = [data.total].concat(data.series);
    KINDS.forEach(function (kind) {
      var holder = document.getElementById("chart-" + kind.key);
      if (!holder) { return; }
      var series = [X_SERIES];
      var columns = [xs];
      rows.forEach(function (row, i) {
        series.push({ label: row.actor, stroke: COLORS[i % COLORS.length], width: i === 0 ? 2 : 1,
                      dash: i === 0 ? [6, 3] : undefined });
        columns.push(row[kind.key]);
      });
      if (plots[kind.key]) { plots[kind.key].destroy(); }
      var width = Math.max(240, holder.clientWidth - 10);
      plots[kind.key] = new window.uPlot({ width: width, height: 200, series: series, tzDate: utcDate,
                                           axes: [X_AXIS, {}],
                                           scales: { y: { range: function (u, min, max) { return [0, Math.max(1, max)]; } } } },
                                         columns, holder);
    });
    say(data.note + " · " + data.actors + " actor(s), " + data.series.length + " drawn");
  }

  function load() {
    fetch(root.getAttribute("data-src"), { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (resp) {
        if (!resp.ok) { throw new Error("HTTP " + resp.status); }
        return resp.json();
      })
      .then(draw)
      .catch(function (err) { say("charts unavailable: " + err.message); });
  }

  load();
  window.setInterval(load, 60000);
  // A phone turned sideways, a window resized: redraw at the new width.
  var resizing = null;
  window.addEventListener("resize", function () {
    window.clearTimeout(resizing);
    resizing = window.setTimeout(function () {
      Object.keys(plots).forEach(function (key) {
        var holder = document.getElementById("chart-" + key);
        if (holder) { plots[key].setSize({ width: Math.max(240, holder.clientWidth - 10), height: 200 }); }
      });
    }, 200);
  });
})();
