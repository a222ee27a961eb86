/* Touchpoint console: the query API's answers as tables, for people rather than programs.
 *
 * Every number on the page comes from the public API (the same calls a script would make), with
 * the project's API key, which stays in this tab (sessionStorage) and goes to this server only.
 * What is shown lives in the URL's fragment (goal, steps, person …), so a view can be bookmarked
 * or shared without the key; `#key=…` is accepted once, kept, and removed from the address.
 * Tracked data is the visitor's: everything is inserted as text, never as HTML.
 */
"use strict";
(function () {
  const KEY = "touchpoint_api_key";
  const $ = (id) => document.getElementById(id);
  const state = new URLSearchParams(location.hash.slice(1));
  if (state.get("key")) {
    sessionStorage.setItem(KEY, state.get("key"));
    state.delete("key");
    history.replaceState(null, "", location.pathname + location.search + (state.toString() ? "#" + state : ""));
  }
  let key = sessionStorage.getItem(KEY) || "";

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (name === "class") node.className = value; else node.setAttribute(name, String(value));
    }
    for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
    return node;
  }
  const pct = (x) => (x === null || x === undefined ? "n/a" : (x * 100).toFixed(1) + "%");
  const interval = (ci) => (ci ? `${(ci[0] * 100).toFixed(1)}–${(ci[1] * 100).toFixed(1)}%` : "");
  const count = (x) => (x === null || x === undefined ? "n/a" : Number(x).toLocaleString("en"));
  const ms = (x) => (x === null || x === undefined ? "n/a" : Math.round(x).toLocaleString("en") + " ms");
  function bar(share) {  // the width through CSSOM: the page's CSP allows no inline style attribute
    const fill = el("span");
    fill.style.width = `${Math.max(0, Math.min(1, share || 0)) * 100}%`;
    return el("div", {class: "bar"}, fill);
  }
  function table(kind, head, rows) {
    return el("table", {"data-result": kind}, el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h)))),
      el("tbody", {}, ...rows));
  }

  function problem(detail) {  // FastAPI's 422 lists the fields at fault
    if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
    return typeof detail === "string" ? detail : JSON.stringify(detail);
  }
  async function api(path, body) {
    const init = {headers: {Authorization: "Bearer " + key}};
    if (body !== undefined) {
      init.method = "POST";
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    const text = await r.text();
    let data = text;
    try { data = JSON.parse(text); } catch (e) { /* not JSON: shown as it is */ }
    if (r.status === 401) {
      forget("the API key was refused: enter another");
      throw new Error("the API key was refused");
    }
    if (!r.ok) throw new Error(`${r.status}: ${problem(data && (data.detail || data.error) || data)}`);
    return data;
  }
  async function show(target, work) {
    const box = $(target);
    box.replaceChildren(el("p", {class: "muted"}, "…"));
    try { box.replaceChildren(...[].concat(await work())); }
    catch (e) { box.replaceChildren(el("p", {class: "error", "data-error": target}, String(e.message || e))); }
  }

  // A step as typed: "page /cart", "page Home", "screen Cart", "track Signed Up", a JSON object,
  // or an event name. The API names touchpoints the same way, so a row can be copied back.
  function step(text) {
    const line = text.trim();
    if (line.startsWith("{")) return JSON.parse(line);
    const m = /^(page|screen|track)\s+(.+)$/.exec(line);
    if (!m) return line;
    if (m[1] === "page") return m[2].startsWith("/") ? {type: "page", path: m[2]} : {type: "page", name: m[2]};
    return m[1] === "screen" ? {type: "screen", name: m[2]} : {name: m[2]};
  }
  // An empty value: no campaign or referrer means a direct visit; elsewhere it was not known.
  const blank = (by) => (/^(campaign|referrer)/.test(by) ? "(none: direct)" : "(unknown)");
  // Typed into the segment, the label an empty value is shown with selects the empty value.
  const BLANKS = new Set(["(none: direct)", "(unknown)", "(none)", "(direct)"]);
  function segment() {  // {dimension: [values]} or null: the API's `filters`
    const by = $("segment-by").value;
    const values = $("segment-values").value.split(",").map((v) => v.trim()).filter((v) => v)
      .map((v) => (BLANKS.has(v) ? "" : v));
    return by && values.length ? {[by]: values} : null;
  }
  function range() {
    const days = Number($("period").value);
    const to = new Date();
    const filters = segment();
    return {from: new Date(to - days * 86400000).toISOString(), to: to.toISOString(),
      include_bots: $("include-bots").checked, ...(filters ? {filters} : {})};
  }
  const goal = () => ($("goal").value.trim() ? {goal: step($("goal").value)} : {});
  function remember() {
    const out = new URLSearchParams();
    for (const id of ["goal", "steps", "touchpoint", "person", "breakdown", "around", "around-channel", "cohort-start", "cohort-return", "segment-values"]) if ($(id).value.trim()) out.set(id, $(id).value.trim());
    for (const id of ["period", "metric", "funnel-scope", "abandonment-scope", "cohort-period", "cohort-kind", "perf-metric", "perf-by"]) out.set(id, $(id).value);
    for (const id of ["abandonment-breakdown", "segment-by"]) if ($(id).value) out.set(id, $(id).value);
    if ($("include-bots").checked) out.set("include-bots", "1");
    history.replaceState(null, "", "#" + out);
  }

  function journeyMap() {
    return show("journey-map", async () => {
      const r = range();
      const query = new URLSearchParams({from: r.from, to: r.to, include_bots: String(r.include_bots)});
      for (const [by, values] of Object.entries(r.filters || {})) for (const v of values) query.append("filter", `${by}:${v}`);
      const map = await api("/v1/journey-map?" + query);
      const first = (list, text) => (list && list.length ? el("li", {}, text(list[0])) : "");
      return el("div", {class: "stages"}, ...map.stages.map((s) => {
        const pain = s.pain_points || {};
        const next = s.conversion_to_next;
        return el("div", {class: "stage", "data-stage": s.stage, "data-people": s.people},
          el("h3", {}, s.stage), el("p", {class: "big"}, `${count(s.people)} people`),
          next ? el("p", {}, `to the next stage: ${pct(next.rate)} `, el("span", {class: "muted"}, interval(next.ci95)))
            : el("p", {class: "muted"}, "last stage"),
          el("p", {class: "muted"}, "most visited"),
          el("ul", {}, ...(s.touchpoints || []).slice(0, 3).map((t) => el("li", {}, `${t.touchpoint} · ${t.channel} · ${count(t.people)}`))),
          el("p", {class: "muted"}, "pain points"),
          el("ul", {class: "pain"},
            first(pain.abandonment, (t) => `left most at ${t.touchpoint} · ${t.channel} (${pct(t.exit_share)})`),
            first(pain.slowest, (t) => `slowest: ${t.touchpoint} · ${t.channel} (${ms(t.median_response_ms)})`),
            first(pain.errors, (t) => `most errors: ${t.touchpoint} · ${t.channel} (${pct(t.error_rate)})`)),
          s.note ? el("p", {class: "muted"}, s.note) : "");
      }));
    });
  }

  function abandonment() {
    return show("abandonment", async () => {
      const by = $("abandonment-breakdown").value;
      const a = await api("/v1/abandonment", {...range(), ...goal(), scope: $("abandonment-scope").value, limit: 15,
        ...(by ? {breakdown: by} : {})});
      const summary = el("p", {"data-journeys": a.journeys, "data-converted": a.converted},
        `${count(a.converted)} of ${count(a.journeys)} converted (${pct(a.conversion_rate)}, 95% CI ${interval(a.conversion_rate_ci95)}); `,
        `${count(a.recovered_cross_channel)} left one channel and converted on another (not a loss).`);
      const rows = a.points.map((p) => el("tr", {"data-touchpoint": p.touchpoint, "data-channel": p.channel, "data-abandoned": p.abandoned, class: "pick", title: "what they did around it"},
        el("td", {}, p.touchpoint), el("td", {}, p.channel), el("td", {class: "n"}, count(p.abandoned)),
        el("td", {}, bar(p.share), pct(p.share)), el("td", {class: "n"}, ms(p.median_response_ms)),
        el("td", {class: "n"}, pct(p.error_rate))));
      rows.forEach((row) => row.addEventListener("click", () => {
        $("around").value = row.dataset.touchpoint;
        $("around-channel").value = row.dataset.channel;
        remember();
        paths();
        $("paths").scrollIntoView({behavior: "smooth"});
      }));
      const converting = a.converting || {};
      const foot = el("p", {class: "muted"}, `People who converted: median response ${ms(converting.median_response_ms)}, error rate ${pct(converting.error_rate)}.`);
      const out = [summary, table("abandonment", ["last touchpoint", "channel", "left", "share", "median response", "errors"], rows), foot];
      if (by && a.breakdown) {  // the worst converting first: who suffers most
        const groups = Object.entries(a.breakdown).sort((x, y) => (x[1].conversion_rate ?? 1) - (y[1].conversion_rate ?? 1));
        out.push(el("h3", {}, `Who suffers most, by ${by.replace("_", " ")}`), table("suffers",
          [by.replace("_", " "), "journeys", "converted", "95% CI", "most left at", "share", "median response there"],
          groups.map(([value, g]) => {
            const top = (g.points || [])[0] || {};
            return el("tr", {"data-value": value, "data-journeys": g.journeys},
              el("td", {}, value || blank(by)), el("td", {class: "n"}, count(g.journeys)),
              el("td", {}, bar(g.conversion_rate), pct(g.conversion_rate)), el("td", {}, interval(g.conversion_rate_ci95)),
              el("td", {}, top.touchpoint ? `${top.touchpoint} · ${top.channel}` : ""), el("td", {class: "n"}, pct(top.share)),
              el("td", {class: "n"}, ms(top.median_response_ms)));
          })));
      }
      return out;
    });
  }

  function trends() {
    return show("trends", async () => {
      const r = await api("/v1/trends", {...range(), ...goal(), interval: "day",
        timezone: Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC"});
      const rows = r.points.map((p) => el("tr", {"data-start": p.start, "data-people": p.people, "data-converted": p.converted},
        el("td", {}, p.start), el("td", {class: "n"}, count(p.people)), el("td", {class: "n"}, count(p.sessions)),
        el("td", {class: "n"}, count(p.converted)), el("td", {}, bar(p.conversion_rate), pct(p.conversion_rate)),
        el("td", {class: "n"}, ms(p.median_response_ms)), el("td", {class: "n"}, pct(p.error_rate))));
      return [table("trends", ["day", "people", "sessions", "converted", "conversion", "median response", "events with an error"], rows),
        el("p", {class: "muted", "data-trend-timezone": r.timezone}, `Days in ${r.timezone}.`)];
    });
  }

  function errorsReport() {
    return show("errors", async () => {
      const r = await api("/v1/errors", {...range(), ...goal(), limit: 15});
      const clean = r.without_errors;
      const summary = el("p", {"data-journeys": r.journeys, "data-clean": clean.journeys},
        `Journeys no error hit: ${count(clean.journeys)}, of which ${pct(clean.conversion_rate)} converted (95% CI ${interval(clean.ci95)}).`);
      const rows = r.errors.map((e) => el("tr", {"data-kind": e.kind, "data-message": e.message, "data-journeys": e.journeys},
        el("td", {class: "error"}, `${e.kind}: ${e.message}`), el("td", {class: "n"}, count(e.journeys)),
        el("td", {class: "n"}, count(e.occurrences)), el("td", {}, bar(e.conversion_rate), pct(e.conversion_rate)),
        el("td", {}, interval(e.ci95)), el("td", {class: "n"}, count(e.left_with_it)), el("td", {}, e.first_hit_at.join(", "))));
      return [summary, table("errors", ["error", "journeys hit", "times", "converted after", "95% CI", "left on it", "first hit at"], rows)];
    });
  }

  function waits() {
    return show("performance", async () => {
      const metric = $("perf-metric").value, by = $("perf-by").value;
      const r = await api("/v1/performance", {...range(), ...goal(), metric, by, limit: 15});
      const value = (x) => (metric === "cls" ? (x === null ? "n/a" : x.toFixed(3)) : ms(x));
      const after = (k) => (k.enough ? pct(k.conversion_rate) : k.observations ? "too few" : "");
      const rows = r.groups.map((g) => el("tr", {"data-value": g.value, "data-observations": g.observations, "data-rating": g.rating},
        el("td", {}, g.value || blank(by)), el("td", {class: "n"}, count(g.observations)),
        el("td", {class: "n"}, value(g.p50)), el("td", {class: "n"}, value(g.p75)), el("td", {class: "n"}, value(g.p95)),
        el("td", {class: g.rating === "poor" ? "error" : ""}, (g.rating || "").replace("_", " ")),
        el("td", {}, bar(g.ratings.poor.share), pct(g.ratings.poor.share)),
        el("td", {class: "n"}, after(g.ratings.good)), el("td", {class: "n"}, after(g.ratings.poor))));
      const o = r.overall;
      const summary = el("p", {"data-observations": o.observations},
        r.note ? r.note : `${count(o.observations)} timed, 75th percentile ${value(o.p75)} (${(o.rating || "").replace("_", " ")}); ` +
          `conversion after a good one ${after(o.ratings.good)}, after a poor one ${after(o.ratings.poor)}` +
          (o.poor_vs_good === null ? "." : ` (${(o.poor_vs_good * 100).toFixed(1)} points).`));
      return [summary, table("performance", [by.replace("_", " "), "timed", "median", "p75", "p95", "rating", "poor", "converted after good", "after poor"], rows)];
    });
  }

  function paths() {
    if (!$("around").value.trim()) return;
    return show("paths", async () => {
      const around = step($("around").value);
      const channel = $("around-channel").value.trim();
      const touchpoint = typeof around === "string" ? {name: around} : around;
      if (channel) touchpoint.channel = channel;
      const p = await api("/v1/paths", {...range(), ...goal(), touchpoint, limit: 10});
      const side = (kind, list) => table(kind, [kind === "previous" ? "right before" : "right after", "channel", "people", "share", "95% CI"],
        list.map((t) => el("tr", {"data-touchpoint": t.touchpoint, "data-channel": t.channel, "data-count": t.count},
          el("td", {}, t.touchpoint), el("td", {}, t.channel), el("td", {class: "n"}, count(t.count)),
          el("td", {}, bar(t.share), pct(t.share)), el("td", {}, interval(t.share_ci95)))));
      return [el("p", {"data-visits": p.visits}, `${count(p.visits)} visits to ${p.touchpoint}` +
        ($("goal").value.trim() ? ` by people who never reached ${$("goal").value.trim()}` : " (set a goal to see only those who did not reach it)")),
        el("div", {class: "sides"}, side("previous", p.previous), side("next", p.next))];
    });
  }

  function funnelTable(kind, steps) {
    return table(kind, ["step", "reached", "of the first", "95% CI", "from the step before", "dropped", "median time"],
      steps.map((s) => el("tr", {"data-step": s.step, "data-count": s.count}, el("td", {}, s.step), el("td", {class: "n"}, count(s.count)),
        el("td", {}, bar(s.conversion_rate), pct(s.conversion_rate)), el("td", {}, interval(s.conversion_rate_ci95)),
        el("td", {class: "n"}, pct(s.step_conversion_rate)), el("td", {class: "n"}, count(s.drop_off)),
        el("td", {class: "n"}, s.median_seconds_from_previous === null ? "" : `${Math.round(s.median_seconds_from_previous)} s`))));
  }
  function funnel() {
    const steps = $("steps").value.split("\n").filter((l) => l.trim()).map(step);
    if (steps.length < 2) return;
    return show("funnel", async () => {
      const body = {...range(), steps, scope: $("funnel-scope").value};
      if ($("breakdown").value) body.breakdown = $("breakdown").value;
      const f = await api("/v1/funnels", body);
      const out = [funnelTable("funnel", f.steps)];
      for (const [value, rows] of Object.entries(f.breakdown || {})) {
        out.push(el("h3", {}, `${$("breakdown").value}: ${value || blank($("breakdown").value)}`), funnelTable("funnel-" + value, rows));
      }
      return out;
    });
  }

  function correlation() {
    if (!$("touchpoint").value.trim()) return;
    return show("correlation", async () => {
      const c = await api("/v1/correlations", {...range(), ...goal(), touchpoint: step($("touchpoint").value), metric: $("metric").value});
      const label = (r) => (r[1] === null ? `≥ ${r[0]}` : `${r[0]}–${r[1]}`) + ($("metric").value === "errors" ? " errors" : " ms");
      const rows = c.buckets.map((b) => el("tr", {"data-bucket": label(b.range), "data-observations": b.observations},
        el("td", {}, label(b.range)), el("td", {class: "n"}, count(b.observations)), el("td", {class: "n"}, count(b.converted)),
        el("td", {}, bar(b.conversion_rate), b.enough ? pct(b.conversion_rate) : "too few"), el("td", {}, b.enough ? interval(b.ci95) : "")));
      const odds = c.odds_ratio_per_second ?? c.odds_ratio_per_error;
      const oddsCi = c.odds_ratio_per_second_ci95 ?? c.odds_ratio_per_error_ci95;
      const per = $("metric").value === "errors" ? "error" : "second";
      const verdict = el("p", {},
        c.note ? c.note : `Spearman ρ ${c.spearman === null ? "n/a" : c.spearman.toFixed(2)}; ` +
          (odds ? `each extra ${per} multiplies the odds of converting by ${odds.toFixed(2)} (95% CI ${oddsCi ? oddsCi.map((x) => x.toFixed(2)).join("–") : "n/a"}).` : ""));
      return [table("correlation", ["bucket", "people", "converted", "conversion", "95% CI"], rows), verdict];
    });
  }

  function retention() {
    if (!$("cohort-start").value.trim()) return;
    return show("retention", async () => {
      const filters = segment();
      const body = {start: step($("cohort-start").value), period: $("cohort-period").value, periods: 8,
        cohort: $("cohort-kind").value,
        include_bots: $("include-bots").checked, timezone: Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC",
        ...(filters ? {filters} : {})};
      if ($("cohort-return").value.trim()) body.return = step($("cohort-return").value);
      const r = await api("/v1/retention", body);
      const head = ["cohort", "people", ...r.overall.map((o) => `${r.period} ${o.period}`)];
      const cell = (k) => el("td", {class: "n" + (k.complete ? "" : " muted"), "data-people": k.people ?? ""},
        k.rate === null ? "" : `${pct(k.rate)} (${count(k.people)})`);
      const rows = r.cohorts.map((c) => el("tr", {"data-cohort": c.cohort, "data-people": c.people},
        el("td", {}, c.cohort), el("td", {class: "n"}, count(c.people)), ...c.retained.map(cell)));
      rows.push(el("tr", {"data-cohort": "all", "data-people": r.people}, el("td", {}, "all cohorts"), el("td", {class: "n"}, count(r.people)),
        ...r.overall.map((o) => el("td", {class: "n", title: o.ci95 ? "95% CI " + interval(o.ci95) : ""},
          o.rate === null ? "" : `${pct(o.rate)}${o.enough ? "" : " (few)"}`))));
      return [table("retention", head, rows), el("p", {class: "muted", "data-timezone": r.timezone},
        r.note || `Grey: the ${r.period} is still in progress. Time zone ${r.timezone}; hover a total for its 95% interval.`)];
    });
  }

  function journey() {
    const id = $("person").value.trim();
    if (!id) return;
    return show("journey", async () => {
      const j = await api(`/v1/journeys/${encodeURIComponent(id)}?from=${encodeURIComponent(range().from)}`);
      const who = el("p", {"data-person": j.person_id},
        `${j.person_id} (${j.identified ? "user" : "anonymous"}); devices: ${j.identities.anonymous_ids.join(", ") || "none"}`);
      const sessions = j.sessions.map((s) => el("div", {class: "session", "data-session": s.session_id},
        el("h3", {}, `${s.started_at.replace("T", " ").slice(0, 19)} · ${s.channel} · ${[s.device && s.device.type, s.browser, s.os, s.country].filter(Boolean).join(" · ")}`),
        table("events", ["time", "touchpoint", "response", "error"], s.events.map((e) => el("tr", {"data-event": e.event_id},
          el("td", {}, e.timestamp.slice(11, 19)), el("td", {}, `${e.type} ${e.type === "page" && e.path ? e.path : e.name}`),
          el("td", {class: "n"}, e.timing && e.timing.response_ms != null ? ms(e.timing.response_ms) : ""),
          el("td", {class: "error"}, e.error ? `${e.error.kind}: ${e.error.message}` : ""))))));
      return [who, ...sessions];
    });
  }

  // Live signals: polled with the cursor of the last answer (an EventSource cannot send the key).
  let cursor = null, liveRows = [];
  async function live() {
    try {
      const q = cursor ? `?after=${encodeURIComponent(cursor)}&limit=200` : "?limit=200";
      const page = await api("/v1/abandonments" + q);
      cursor = page.next || cursor;
      for (const s of page.abandonments) {
        liveRows.unshift(el("tr", {"data-signal": s.kind, "data-person": s.person_id},
          el("td", {}, s.detected_at.replace("T", " ").slice(0, 19)), el("td", {}, s.kind), el("td", {}, s.person_id),
          el("td", {}, s.channel), el("td", {}, s.exit_touchpoint), el("td", {class: "n"}, `${Math.round(s.duration_seconds)} s`),
          el("td", {class: "n"}, count(s.errors))));
      }
      liveRows = liveRows.slice(0, 50);
      $("live").replaceChildren(liveRows.length ? table("live", ["detected", "kind", "person", "channel", "left at", "session", "errors"], liveRows)
        : el("p", {class: "muted"}, "none yet"));
    } catch (e) {
      $("live").replaceChildren(el("p", {class: "error"}, String(e.message || e)));
    }
  }

  async function status() {
    try {
      const r = await fetch("/v1/status");
      const s = (await r.json()).sessionizer;
      if (!s) { $("status").textContent = ""; return; }
      const parts = [`lag ${count(s.consumer_lag)} events`];
      if (s.ingestion_delay_seconds !== null) parts.push(`delay ${s.ingestion_delay_seconds.toFixed(1)} s`);
      if (s.seconds_since_last_write !== null) parts.push(`last write ${Math.round(s.seconds_since_last_write)} s ago`);
      $("status").textContent = parts.join(" · ");
      $("status").className = s.last_error ? "error" : "muted";
      if (s.last_error) $("status").textContent += " · last error: " + s.last_error;
    } catch (e) {
      $("status").textContent = "status unavailable";
    }
  }

  function forget(reason) {
    sessionStorage.removeItem(KEY);
    key = "";
    $("key-problem").textContent = typeof reason === "string" ? reason : "";
    $("key-problem").hidden = typeof reason !== "string";
    ready();
  }
  function ready() {
    $("panels").hidden = !key;
    $("needs-key").hidden = !!key;
    $("key-form").hidden = !!key;
    $("forget").hidden = !key;
  }
  function run() {
    remember();
    journeyMap();
    abandonment();
    trends();
    errorsReport();
    waits();
    paths();
    funnel();
    correlation();
    retention();
    journey();
  }

  for (const [id, value] of state) if ($(id)) { if ($(id).type === "checkbox") $(id).checked = value === "1"; else $(id).value = value; }
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    key = $("key").value.trim();
    sessionStorage.setItem(KEY, key);
    $("key-problem").hidden = true;
    $("key").value = "";
    ready();
    run();
    live();
  });
  $("forget").addEventListener("click", () => forget());
  const on = (form, fn) => $(form).addEventListener("submit", (ev) => { ev.preventDefault(); remember(); fn(); });
  on("abandonment-form", abandonment);
  on("funnel-form", funnel);
  on("paths-form", paths);
  on("performance-form", waits);
  on("retention-form", retention);
  on("correlation-form", correlation);
  on("journey-form", journey);
  for (const id of ["period", "include-bots", "segment-by", "segment-values"]) $(id).addEventListener("change", run);
  $("goal").addEventListener("change", () => { remember(); abandonment(); trends(); errorsReport(); waits(); paths(); correlation(); });

  ready();
  status();
  setInterval(status, 10000);
  if (key) { run(); live(); }
  setInterval(() => { if (key) live(); }, 5000);
})();
