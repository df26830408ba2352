// Live pages: a page that declares <div id="live-config" data-live-src="/api/..."> polls that JSON
// endpoint every few seconds while the tab is visible (paused while it is hidden). When what the
// JSON says changes (ages, rates and timestamps of the poll itself aside), the page reads itself
// again and swaps its [data-live-region] parts, rendered by the same templates as the first load:
// no second renderer in JavaScript. A region the operator is typing in is left alone. The
// indicator in the header says whether the page is live, paused or cannot reach the console.
(function () {
  "use strict";
  var config = document.getElementById("live-config");
  var indicator = document.getElementById("live-indicator");
  if (!config || !indicator || !window.fetch || !window.DOMParser) { return; }
  var src = config.getAttribute("data-live-src");
  // The page's own GET address: a page shown in answer to a form (a refused edit) names it.
  var page = config.getAttribute("data-live-page") || window.location.href;
  var every = 1000 * (parseFloat(config.getAttribute("data-live-every")) || 2);
  var VOLATILE = /(_seconds|_rate|generated_at|csrf_token)$/;
  var last = null;
  var timer = null;
  var inFlight = false;
  var drainMax = null;

  function show(state, text) {
    indicator.hidden = false;
    indicator.className = "live live-" + state;
    indicator.textContent = text;
    indicator.setAttribute("data-state", state);
  }

  function stable(value) {
    if (Array.isArray(value)) { return value.map(stable); }
    if (value && typeof value === "object") {
      var out = {};
      Object.keys(value).sort().forEach(function (k) { if (!VOLATILE.test(k)) { out[k] = stable(value[k]); } });
      return out;
    }
    return value;
  }

  function busy(region) {
    if (region.querySelector("[data-live-busy]") || region.hasAttribute("data-live-busy")) { return true; }
    var active = document.activeElement;
    if (active && region.contains(active) && /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName)) { return true; }
    return Array.prototype.some.call(region.querySelectorAll("input, textarea, select"), function (el) {
      if (el.type === "hidden") { return false; }
      if (el.type === "checkbox" || el.type === "radio") { return el.checked !== el.defaultChecked; }
      if (el.tagName === "SELECT") {
        // Without a `selected` attribute the first option is the default.
        var initial = Array.prototype.findIndex.call(el.options, function (o) { return o.defaultSelected; });
        return el.selectedIndex !== Math.max(0, initial);
      }
      return el.value !== el.defaultValue;
    });
  }

  function swap(html) {
    var doc = new DOMParser().parseFromString(html, "text/html");
    var changed = 0;
    Array.prototype.forEach.call(document.querySelectorAll("[data-live-region]"), function (old) {
      var fresh = old.id && doc.getElementById(old.id);
      if (!fresh || busy(old)) { return; }
      var key = old.getAttribute("data-live-key");
      if (key !== null && key === fresh.getAttribute("data-live-key")) { return; }
      old.replaceWith(document.importNode(fresh, true));
      changed += 1;
    });
    if (changed) { document.dispatchEvent(new CustomEvent("fifoq:live-updated")); }
  }

  function refresh() {
    return fetch(page, { credentials: "same-origin", headers: { "X-Fifoq-Live": "1" } })
      .then(function (resp) {
        // A 404 page still has its regions (a repaired group, an unknown trace): swap those too.
        if (!resp.ok && resp.status !== 404) { throw new Error("HTTP " + resp.status); }
        return resp.text();
      })
      .then(swap);
  }

  // The actor page: how much of the backlog seen since the page opened has drained.
  function drain(data) {
    var text = document.getElementById("drain-text");
    var bar = document.getElementById("drain-progress");
    if (!text || !bar || typeof data.open !== "number") { return; }
    drainMax = Math.max(drainMax || 0, data.open);
    text.textContent = data.open + " open message(s)" +
      (drainMax > data.open ? ", " + (drainMax - data.open) + " of " + drainMax + " drained since this page opened" : "");
    bar.hidden = drainMax === 0;
    bar.max = Math.max(1, drainMax);
    bar.value = drainMax - data.open;
  }

  function clock() {
    return new Date().toISOString().slice(11, 19) + " UTC";
  }

  function schedule(delay) {
    window.clearTimeout(timer);
    timer = window.setTimeout(poll, delay);
  }

  function poll() {
    if (document.hidden) { show("paused", "paused (tab hidden)"); return; }
    if (inFlight) { return; }
    inFlight = true;
    fetch(src, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (resp) {
        if (resp.status === 401) { throw new Error("logged out"); }
        // 404 (a group repaired, a message gone) and 503 (ledger down) still say something: compare them too.
        return resp.json().then(function (data) { return { status: resp.status, data: data }; });
      })
      .then(function (answer) {
        if (answer.status >= 500) { show("error", "live: " + (answer.data.ledger_error || answer.data.error || "console error")); }
        var digest = answer.status + ":" + JSON.stringify(stable(answer.data));
        // The first answer is compared with the page itself: whatever changed between the page's
        // rendering and this first poll (a replay that ran in between) would go unnoticed otherwise.
        var changed = last === null || digest !== last;
        last = digest;
        return (changed ? refresh() : Promise.resolve()).then(function () {
          drain(answer.data || {});
          if (answer.status < 500) { show("on", "live · " + clock()); }
        });
      })
      .catch(function (err) { show("error", "live: " + err.message); })
      .then(function () {
        inFlight = false;
        if (!document.hidden) { schedule(every); }
      });
  }

  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      window.clearTimeout(timer);
      show("paused", "paused (tab hidden)");
    } else {
      schedule(0);
    }
  });
  show("starting", "live: connecting");
  schedule(0);
})();
