// window.fifoqTime: how the console writes a time in the browser, with the rules of admin/timefmt.py
// (always UTC, "2024-05-01 12:34:56 UTC", ages such as "3 min ago"). Every script that shows a
// time uses it (the charts' axes and legends, pages that update themselves); it also keeps the
// age of every <time class="when"> the server rendered current, measured against the server's
// clock (<meta name="fifoq-server-now">) rather than the browser's, which may be off.
(function () {
  "use strict";
  var meta = document.querySelector('meta[name="fifoq-server-now"]');
  var serverNow = meta ? Date.parse(meta.getAttribute("content")) : NaN;
  var skew = isNaN(serverNow) ? 0 : serverNow - Date.now();
  var NOTHING = "\u2014";

  function pad(n, width) {
    var s = String(n);
    while (s.length < (width || 2)) { s = "0" + s; }
    return s;
  }

  function toDate(value) {
    if (value === null || value === undefined || value === "") { return null; }
    if (value instanceof Date) { return value; }
    // numbers are Unix seconds (uPlot's x values); strings are ISO 8601 from the API
    var d = typeof value === "number" ? new Date(value * 1000) : new Date(value);
    return isNaN(d.getTime()) ? null : d;
  }

  function day(value) {
    var d = toDate(value);
    if (!d) { return NOTHING; }
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate());
  }

  function hhmm(value) {
    var d = toDate(value);
    return d ? pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) : NOTHING;
  }

  function text(value) {
    var d = toDate(value);
    return d ? day(d) + " " + hhmm(d) + ":" + pad(d.getUTCSeconds()) + " UTC" : NOTHING;
  }

  function iso(value) {
    var d = toDate(value);
    return d ? d.toISOString() : null;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || isNaN(seconds)) { return NOTHING; }
    var s = Math.floor(Math.max(0, seconds)), big, small;
    if (s < 60) { return s + " s"; }
    if (s < 3600) {
      big = Math.floor(s / 60); small = s % 60;
      return big + " min" + (small ? " " + small + " s" : "");
    }
    if (s < 86400) {
      big = Math.floor(s / 3600); small = s % 3600;
      return big + " h" + (small >= 60 ? " " + Math.floor(small / 60) + " min" : "");
    }
    big = Math.floor(s / 86400); small = s % 86400;
    return big + " d" + (small >= 3600 ? " " + Math.floor(small / 3600) + " h" : "");
  }

  function now() {
    return new Date(Date.now() + skew);
  }

  function relative(value, at) {
    var d = toDate(value);
    if (!d) { return NOTHING; }
    var delta = ((toDate(at) || now()).getTime() - d.getTime()) / 1000;
    if (Math.abs(delta) < 1) { return "just now"; }
    return delta > 0 ? duration(delta) + " ago" : "in " + duration(-delta);
  }

  // The markup of admin.timefmt.html(), for scripts that build rows.
  function element(value) {
    var d = toDate(value);
    if (!d) { return document.createTextNode(NOTHING); }
    var t = document.createElement("time");
    t.className = "when";
    t.setAttribute("datetime", iso(d));
    t.textContent = text(d);
    var ago = document.createElement("span");
    ago.className = "ago";
    ago.textContent = " \u00b7 " + relative(d);
    t.appendChild(ago);
    return t;
  }

  function refresh(root) {
    var nodes = (root || document).querySelectorAll("time.when[datetime] .ago");
    for (var i = 0; i < nodes.length; i++) {
      nodes[i].textContent = " \u00b7 " + relative(nodes[i].parentNode.getAttribute("datetime"));
    }
  }

  window.fifoqTime = { text: text, hhmm: hhmm, day: day, iso: iso, duration: duration, relative: relative,
                       now: now, element: element, refresh: refresh };
  document.addEventListener("DOMContentLoaded", function () { refresh(); });
  window.setInterval(function () {
    if (!document.hidden) { refresh(); }
  }, 15000);
})();
