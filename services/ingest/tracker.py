"""The web tracker served at ``GET /v1/tracker.js``: small, first-party, no third-party cookies.

    <script src="https://collect.shop.example/v1/tracker.js" data-write-key="wk_..." defer></script>
    touchpoint.track("Product Added", {sku: "A1"}); touchpoint.identify("user-42", {plan: "gold"})

It sends page views (with navigation timing, LCP, INP and CLS), actions and
JavaScript errors as batches with ``fetch`` (``text/plain``, no preflight), and sends
a batch again with the same event ids on 429, 503, 504 or a lost answer, so it is
stored once whatever the first attempt did; when the page is being left it uses
``navigator.sendBeacon``, which outlives the page but cannot read the answer. Events
not yet confirmed are kept in localStorage (at most 500) and sent again by the next
page of the site, so a reload, a closed tab or an offline spell loses none. In a single-page
app each route change (``history.pushState``/``replaceState``, the back button) is a page view
whose referrer is the page left; only a document's first page view carries navigation timing.
With ``data-consent="required"`` nothing is written to the browser or sent until
``touchpoint.optIn()`` (the page's events wait in memory until then); ``touchpoint.optOut()``
stops it, forgets the anonymous id and drops what was not sent; the choice is remembered. The
anonymous id lives in the site's own localStorage (a first-party cookie when storage
is blocked).
"""

from __future__ import annotations

from services.core.assets import Asset

TRACKER_JS = r"""/* Touchpoint web tracker */
(function (w, d) {
  "use strict";
  if (w.touchpoint && w.touchpoint.__loaded) return;
  var script = d.currentScript || {};
  var ds = script.dataset || {};
  var cfg = {
    writeKey: ds.writeKey || "",
    host: ds.host || (script.src ? script.src.replace(/\/v1\/tracker\.js.*$/, "") : ""),
    flushMs: 2000
  };
  var queue = [], userId = null, vitals = {lcp_ms: null, inp_ms: null, cls: 0};
  function uuid() {
    if (w.crypto && crypto.randomUUID) return crypto.randomUUID();
    return "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx".replace(/[xy]/g, function (c) {
      var r = Math.random() * 16 | 0; return (c === "x" ? r : (r & 3 | 8)).toString(16);
    });
  }
  function anonymousId() {
    var key = "tp_aid", id = null;
    try { id = localStorage.getItem(key); } catch (e) {}
    if (!id) { var m = d.cookie.match(/(?:^|; )tp_aid=([^;]+)/); id = m && m[1]; }
    if (!id) id = uuid();
    try { localStorage.setItem(key, id); } catch (e) {
      d.cookie = key + "=" + id + "; path=/; max-age=31536000; SameSite=Lax";
    }
    return id;
  }
  // Consent. With data-consent="required" the tracker writes nothing to the browser and sends
  // nothing until touchpoint.optIn(): this page's events wait in memory (sent on opt-in, gone if
  // the page is left first). touchpoint.optOut() stops everything, forgets the anonymous id and
  // drops what was not sent. The choice itself is remembered in tp_consent ("yes" / "no").
  var CONSENT = "tp_consent", given = null;  // given: this page's choice, should storage be blocked
  function choice() { try { return localStorage.getItem(CONSENT) || given; } catch (e) { return given; } }
  function allowed() { var c = choice(); return c !== "no" && (ds.consent !== "required" || c === "yes"); }
  var aid = allowed() ? anonymousId() : null;
  var referrer = d.referrer;  // after a single-page app's route change: the page it left
  function context() {
    var c = navigator.connection || {};
    return {
      page: {url: location.href, path: location.pathname, referrer: referrer, title: d.title,
             search: location.search},
      user_agent: navigator.userAgent, locale: navigator.language,
      timezone: (Intl.DateTimeFormat().resolvedOptions() || {}).timeZone,
      screen: {width: screen.width, height: screen.height},
      network: {type: c.type, effective_type: c.effectiveType}
    };
  }
  function push(type, name, properties, extra) {
    var e = {event_id: uuid(), type: type, name: name || "", anonymous_id: aid, timestamp: new Date().toISOString(),
             properties: properties || {}, context: context()};
    if (userId) e.user_id = userId;
    for (var k in extra || {}) e[k] = extra[k];
    if (choice() === "no") return;
    queue.push(e);
    if (queue.length > MAX_KEPT) queue.shift();  // waiting for consent: memory stays bounded
    if (queue.length >= 20) flush();
  }
  var retrying = [];  // batches waiting to be sent again
  // Events not yet confirmed are kept in the site's localStorage, so a reload, a closed tab or a
  // crash while offline loses none: the next page of the site sends them again (stored once: the
  // same event_id). Another tab may send a batch still in flight here; that too is stored once.
  var KEPT = "tp_unsent", MAX_KEPT = 500;
  function kept() {
    try { return JSON.parse(localStorage.getItem(KEPT) || "[]"); } catch (e) { return []; }
  }
  function keep(add, drop) {
    try {
      var gone = {}, i, all;
      for (i = 0; i < add.length; i++) gone[add[i].event_id] = 1;
      for (i = 0; i < drop.length; i++) gone[drop[i].event_id] = 1;
      all = kept().filter(function (e) { return !gone[e.event_id]; }).concat(add).slice(-MAX_KEPT);
      if (all.length) localStorage.setItem(KEPT, JSON.stringify(all)); else localStorage.removeItem(KEPT);
    } catch (e) {}
  }
  function post(batch, unloading, tries) {
    var body = JSON.stringify({sent_at: new Date().toISOString(), events: batch});
    var url = cfg.host + "/v1/batch?beacon=1&write_key=" + encodeURIComponent(cfg.writeKey);
    keep(batch, []);
    // Leaving the page: a beacon outlives it, though its answer cannot be read. Queued by the
    // browser, a first try counts as delivered; a batch that already failed stays kept.
    if ((unloading || !w.fetch) && navigator.sendBeacon && navigator.sendBeacon(url, body)) {
      if (!tries) keep([], batch);
      return;
    }
    if (!w.fetch) return;
    fetch(url, {method: "POST", body: body, keepalive: body.length < 60000, headers: {"Content-Type": "text/plain"}})
      .then(function (r) {
        if (r.status === 429 || r.status === 503 || r.status === 504) retry(batch, tries); else keep([], batch);
      }, function () { retry(batch, tries); });
  }
  // 503: nothing was stored; 504 or a lost answer: maybe it was. Either way the same events, with
  // the same event_id, go again and are stored once. Each batch waits 1, 2, 4 ... 30 s between
  // tries and is given up after 6 retries: kept for the next page when the browser is offline,
  // dropped otherwise (a collector that never answers this origin's CORS must not be hammered;
  // it stored the events on the first try then anyway).
  function retry(batch, tries) {
    if (tries >= 6) {
      if (navigator.onLine !== false) keep([], batch);
      return;
    }
    retrying.push(batch);
    setTimeout(function () {
      var i = retrying.indexOf(batch);
      if (i < 0) return;  // already sent by a beacon when the page was left
      retrying.splice(i, 1);
      post(batch, false, tries + 1);
    }, Math.min(1000 * Math.pow(2, tries), 30000));
  }
  function flush(unloading) {
    if (!cfg.writeKey || !allowed()) return;
    if (!aid) aid = anonymousId();  // consent came (here or in another tab): the id starts now
    for (var i = 0; i < queue.length; i++) if (!queue[i].anonymous_id) queue[i].anonymous_id = aid;
    var leaving = unloading === true;
    while (leaving && retrying.length) post(retrying.shift(), true, 6);
    while (queue.length) post(queue.splice(0, 50), leaving, 0);
  }
  function timing() {
    var nav = (performance.getEntriesByType && performance.getEntriesByType("navigation")[0]) || {};
    var t = {};
    if (nav.responseStart) t.ttfb_ms = Math.round(nav.responseStart);
    if (nav.loadEventEnd) t.load_ms = Math.round(nav.loadEventEnd);
    if (nav.domInteractive) t.response_ms = Math.round(nav.domInteractive);
    if (vitals.lcp_ms !== null) t.lcp_ms = Math.round(vitals.lcp_ms);
    if (vitals.inp_ms !== null) t.inp_ms = Math.round(vitals.inp_ms);
    t.cls = Math.round(vitals.cls * 1000) / 1000;
    return t;
  }
  function observe(type, fn) {
    try { new PerformanceObserver(function (l) { l.getEntries().forEach(fn); }).observe({type: type, buffered: true}); }
    catch (e) {}
  }
  observe("largest-contentful-paint", function (e) { vitals.lcp_ms = e.startTime; });
  observe("event", function (e) { vitals.inp_ms = Math.max(vitals.inp_ms || 0, e.duration); });
  observe("layout-shift", function (e) { if (!e.hadRecentInput) vitals.cls += e.value; });
  w.addEventListener("error", function (ev) {
    push("track", "Error", {source: ev.filename, line: ev.lineno},
         {error: {kind: "js", message: String(ev.message), fatal: false}});
  });
  w.addEventListener("unhandledrejection", function (ev) {
    push("track", "Error", {}, {error: {kind: "js", message: String(ev.reason), fatal: false}});
  });
  var sentVitals = false;
  function pageEnd() {
    if (!sentVitals) { sentVitals = true; push("track", "Page Timing", {path: location.pathname}, {timing: timing()}); }
    flush(true);
  }
  d.addEventListener("visibilitychange", function () { if (d.visibilityState === "hidden") pageEnd(); });
  w.addEventListener("pagehide", pageEnd);
  setInterval(flush, cfg.flushMs);
  var unsent = allowed() ? kept() : [];  // left by an earlier page: sent first
  if (unsent.length) { queue = unsent.concat(queue); setTimeout(flush, 0); }
  // Navigation timing belongs to the document's load: only its first page view carries it. A
  // single-page app's later page views load no document; repeating the first load's times on
  // them would count it again in every response-time analysis.
  var loaded = false;
  var api = {
    __loaded: true,
    init: function (options) { for (var k in options) cfg[k] = options[k]; return api; },
    page: function (name, properties) {
      push("page", name || d.title, properties, {timing: loaded ? {} : timing()});
      loaded = true;
    },
    track: function (name, properties, timingMs) {
      push("track", name, properties, timingMs ? {timing: {response_ms: timingMs}} : {});
    },
    identify: function (id, traits) { userId = String(id); push("identify", "", traits); flush(); },
    reset: function () {
      userId = null;
      try { localStorage.removeItem("tp_aid"); } catch (e) {}
      aid = allowed() ? anonymousId() : null;
    },
    optIn: function () { given = "yes"; try { localStorage.setItem(CONSENT, "yes"); } catch (e) {} flush(); },
    optOut: function () {
      given = "no";
      try { localStorage.setItem(CONSENT, "no"); localStorage.removeItem("tp_aid"); localStorage.removeItem(KEPT); }
      catch (e) {}
      d.cookie = "tp_aid=; path=/; max-age=0; SameSite=Lax";
      queue = []; retrying = []; aid = null;
    },
    flush: flush
  };
  w.touchpoint = api;
  // Single-page apps change pages without loading one: history.pushState / replaceState and the
  // back button (popstate). Each change of path or query is a page view, its referrer the page
  // left; a change of hash or state alone is not. Checked a tick later, once the app has set
  // the new title. data-auto-page="false" turns these off with the first one.
  var shown = location.pathname + location.search, shownUrl = location.href;
  function routeChanged() {
    var now = location.pathname + location.search, left = shownUrl;
    shownUrl = location.href;
    if (now === shown) return;
    shown = now;
    if (ds.autoPage === "false" || !loaded) return;  // before the first page view: it shows where it landed
    referrer = left;
    api.page();
  }
  function later() { setTimeout(routeChanged, 0); }
  ["pushState", "replaceState"].forEach(function (method) {
    var original = w.history && history[method];
    if (typeof original !== "function") return;
    history[method] = function () { var out = original.apply(this, arguments); later(); return out; };
  });
  w.addEventListener("popstate", later);
  if (ds.autoPage !== "false") {
    if (d.readyState === "complete") api.page(); else w.addEventListener("load", function () { api.page(); });
  }
})(window, document);
"""


TRACKER = Asset.of(TRACKER_JS, "application/javascript")
