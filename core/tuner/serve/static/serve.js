// tuner serve: the pages' behaviour. Plain JavaScript, no build step; charts by the vendored uPlot.
"use strict";

const PAGE = JSON.parse(document.getElementById("page-data").textContent);
const MAIN = document.getElementById("main");
const POLL_MS = 1000;
const COLORS = ["#2f6fdf", "#d9480f", "#2b8a3e", "#862e9c", "#c92a2a", "#1098ad", "#e67700", "#495057"];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}

// replaceChildren without the nulls that optional parts leave (it would print "null").
function fill(node, ...children) { node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined)); }

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store" });
  const body = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
  if (!r.ok) throw Object.assign(new Error(body.error || `HTTP ${r.status}`), { status: r.status });
  return body;
}

async function postJSON(url, data) {
  const r = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(data || {}) });
  const body = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}

// Poll fn every POLL_MS, one call at a time, never stacking up behind a slow answer.
function every(fn) {
  const tick = async () => {
    try { await fn(); } catch (e) { console.warn(e); }
    setTimeout(tick, POLL_MS);
  };
  tick();
}

const fmt = {
  num(v, digits = 4) { return v === null || v === undefined ? "–" : Number(v).toPrecision(digits); },
  time(t) { return t ? new Date(t * 1000).toLocaleString() : "–"; },
  dur(s) {
    if (s === null || s === undefined) return "–";
    s = Math.round(s);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    return h ? `${h}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
  },
  size(b) { return b > 1e9 ? (b / 1e9).toFixed(1) + " GB" : b > 1e6 ? (b / 1e6).toFixed(1) + " MB" : (b / 1e3).toFixed(1) + " kB"; },
};

const fileURL = (rel) => "/files/" + rel.split("/").map(encodeURIComponent).join("/");
const runURL = (id) => "/run?id=" + encodeURIComponent(id);
const badge = (state) => el("span", { class: "badge " + state, text: state });

// ---- charts -----------------------------------------------------------------------------------

function chartWidth(node) { return Math.max(280, Math.min((node.clientWidth || 600) - 20, 1100)); }

// A line chart that keeps its uPlot instance and only swaps the data when the series stay the same.
class LineChart {
  constructor(parent, title, opts = {}) {
    this.box = el("div", { class: "chart", "data-chart": title }, el("h3", { text: title }));
    parent.append(this.box);
    this.opts = opts;
    this.key = null;
    this.plot = null;
  }
  update(xs, series) {  // series: [{label, values, color, width, dash, band}]
    const key = series.map((s) => s.label).join("|");
    const data = [xs, ...series.map((s) => s.values)];
    this.box.dataset.points = xs.length;  // what the page shows, for a reader (and the browser tests)
    if (this.plot && key === this.key) { this.plot.setData(data); return; }
    if (this.plot) this.plot.destroy();
    this.key = key;
    const bands = this.opts.band ? [{ series: this.opts.band, fill: "rgba(47,111,223,0.12)" }] : undefined;
    this.plot = new uPlot({
      width: chartWidth(this.box), height: this.opts.height || 220,
      scales: { x: { time: false }, y: this.opts.log ? { distr: 3 } : {} },
      series: [{ label: "step" }, ...series.map((s, i) => ({
        label: s.label, stroke: s.color || COLORS[i % COLORS.length], width: s.width || 1.5,
        dash: s.dash, spanGaps: true, points: { show: s.points || false },
      }))],
      bands,
      axes: [{}, { size: 60 }],
    }, data, this.box);
  }
}

function histogram(parent, hist) {
  const box = el("div", { "data-chart": "sigma" }, el("h3", { text: "σ sampled (histogram)" }));
  const max = Math.max(1, ...hist.counts);
  const w = 360, h = 140, bw = w / hist.counts.length;
  const bars = hist.counts.map((c, i) =>
    `<rect x="${i * bw + 1}" y="${h - (c / max) * h}" width="${bw - 2}" height="${(c / max) * h}"><title>${hist.edges[i]}–${hist.edges[i + 1]}: ${c}</title></rect>`).join("");
  box.insertAdjacentHTML("beforeend", `<svg class="hist" viewBox="0 -4 ${w} ${h + 20}" width="${w}" height="${h + 24}">${bars}
    <text x="0" y="${h + 14}">0</text><text x="${w / 2 - 8}" y="${h + 14}">0.5</text><text x="${w - 10}" y="${h + 14}">1</text></svg>`);
  parent.append(box);
}

// ---- validation media -------------------------------------------------------------------------

function video(url, label) {
  const v = el("video", { src: fileURL(url), controls: true, loop: true, muted: true, autoplay: true, playsinline: true, preload: "auto" });
  v.muted = true;
  return el("figure", { class: "clip" }, url.endsWith(".png") || url.endsWith(".jpg") ? el("img", { src: fileURL(url) }) : v,
    el("figcaption", { text: label }));
}

function roundView(round, live) {
  // A round without its record is still rendering while the run runs; after that it was cut short.
  const note = round.complete ? "" : live ? " (rendering…)" : " (cut short: the run ended during it)";
  const box = el("section", { class: "round", "data-step": round.step }, el("h3", { text: `step ${round.step}${note}` }));
  for (const clip of round.clips) {
    const variants = Object.entries(clip.variants);
    box.append(el("div", { class: "clip-row" }, el("div", { class: "key", text: clip.key }),
      variants.map(([name, url]) => video(url, variants.length > 1 ? name : clip.key))));
    for (const [name, list] of Object.entries(clip.previews || {})) {
      if (!list.length) continue;
      box.append(el("div", { class: "previews" }, el("div", { class: "key", text: `previews (${name})` }),
        list.map((p) => video(p.url, `sampler step ${p.step}`))));
    }
  }
  if (round.contact_sheet) {
    box.append(el("a", { href: fileURL(round.contact_sheet), target: "_blank" },
      el("img", { class: "sheet", src: fileURL(round.contact_sheet), alt: `contact sheet, step ${round.step}` })));
  }
  return box;
}

// ---- pages ------------------------------------------------------------------------------------

function runsPage() {
  let page = 1, query = "";
  const picked = new Set();
  const search = el("input", { type: "search", placeholder: "filter runs", oninput: (e) => { query = e.target.value; page = 1; refresh(); } });
  const compare = el("button", { disabled: true, onclick: () => {
    location.href = "/compare?" + [...picked].map((id) => "id=" + encodeURIComponent(id)).join("&");
  } }, "Compare selected");
  const table = el("div", { id: "runs" });
  const pager = el("div", { class: "pager" });
  MAIN.replaceChildren(el("div", { class: "toolbar" }, search, compare), table, pager);
  async function refresh() {
    const d = await getJSON(`/api/runs?page=${page}&q=${encodeURIComponent(query)}`);
    if (!d.total) {
      table.replaceChildren(el("p", { class: "empty" }, query ? `No run matches "${query}".` :
        `No runs in ${d.folder} yet. A run is a folder holding a train_log.jsonl; start one on the `,
        query ? null : el("a", { href: "/start", text: "Start page" }), "."));
      pager.replaceChildren();
      return;
    }
    const rows = d.runs.map((r) => el("tr", { "data-run": r.id },
      el("td", {}, el("input", { type: "checkbox", checked: picked.has(r.id), onchange: (e) => {
        e.target.checked ? picked.add(r.id) : picked.delete(r.id); compare.disabled = picked.size < 2; } })),
      el("td", {}, el("a", { href: runURL(r.id), text: r.id === "." ? "(this folder)" : r.id })),
      el("td", { text: [r.family, r.flavour].filter(Boolean).join(" / ") || "–" }),
      el("td", {}, badge(r.state)),
      el("td", { class: "step", text: `${r.step}${r.total ? " / " + r.total : ""}` }),
      el("td", { text: fmt.dur(r.eta_s) }),
      el("td", { text: fmt.num(r.last_loss) }),
      el("td", { text: fmt.time(r.started) }),
      el("td", { text: fmt.time(r.ended) })));
    table.replaceChildren(el("table", {}, el("thead", {}, el("tr", {}, ["", "run", "family", "state", "step", "ETA", "loss", "started", "ended"].map((h) => el("th", { text: h })))), el("tbody", {}, rows)));
    pager.replaceChildren(`${d.total} runs · page ${d.page} of ${d.pages} `,
      el("button", { disabled: d.page <= 1, onclick: () => { page--; refresh(); } }, "‹"),
      el("button", { disabled: d.page >= d.pages, onclick: () => { page++; refresh(); } }, "›"));
  }
  every(refresh);
}

function runPage() {
  const id = PAGE.id;
  let version = null;
  const head = el("div", { class: "runhead" });
  const charts = el("div", { class: "charts" });
  const rounds = el("div", { id: "rounds" });
  const side = el("div", { class: "side" });
  MAIN.replaceChildren(head, charts, el("h2", { text: "Validation" }), rounds, side);
  const loss = new LineChart(charts, "loss", { band: [2, 3] });
  const lr = new LineChart(charts, "learning rate", { height: 160 });
  const grad = new LineChart(charts, "grad norm", { height: 160 });
  let evalChart = null, histBox = el("div", { class: "chart hist-box" }), shown = new Map();
  charts.append(histBox);
  async function refresh() {
    const d = await getJSON(`/api/run?id=${encodeURIComponent(id)}` + (version ? `&v=${encodeURIComponent(version)}` : ""));
    if (d.unchanged) return;
    version = d.version;
    const s = d.summary, job = d.job;
    const ended = ["stopped", "finished", "failed"].includes(s.state);  // its end record is written; the process is exiting
    const stop = job && job.running && !ended ? el("button", { class: "stop", onclick: async (e) => {
      e.target.disabled = true; await postJSON(`/api/jobs/${job.id}/stop`); } }, job.stop_requested ? "stopping…" : "Stop (Ctrl-C)") : null;
    if (stop && job.stop_requested) stop.disabled = true;
    fill(head, el("h1", { text: id }), badge(s.state),
      el("span", { class: "stat" }, "step ", el("b", { id: "step", text: `${s.step}` }), s.total ? ` / ${s.total}` : ""),
      el("span", { class: "stat", text: `ETA ${fmt.dur(s.eta_s)}` }),
      el("span", { class: "stat", text: `loss ${fmt.num(s.last_loss)}` }),
      el("span", { class: "stat", text: [s.family, s.flavour].filter(Boolean).join(" / ") }),
      stop,
      s.error ? el("p", { class: "error", text: `ended with: ${s.error}` }) : null,
      s.bad_lines ? el("p", { class: "muted", text: `${s.bad_lines} unreadable line(s) in train_log.jsonl skipped` }) : null);
    const c = d.curves;
    if (c && c.steps.length) {
      const S = c.series;
      const lossSeries = [{ label: "loss (smoothed)", values: S.loss_smooth, color: COLORS[1], width: 2 },
        { label: "loss (max)", values: S.loss_max, color: "rgba(47,111,223,0.25)", width: 1 },
        { label: "loss (min)", values: S.loss_min, color: "rgba(47,111,223,0.25)", width: 1 },
        { label: "loss", values: S.loss, color: COLORS[0], width: 1 }];
      loss.update(c.steps, lossSeries.filter((x) => x.values));
      if (S.lr) lr.update(c.steps, [{ label: "lr", values: S.lr }]);
      if (S.grad_norm) grad.update(c.steps, [{ label: "grad norm", values: S.grad_norm, color: COLORS[2] }]);
      if (S.eval_loss) {
        evalChart = evalChart || new LineChart(charts, "eval loss", { height: 160 });
        evalChart.update(c.steps, [{ label: "eval loss", values: S.eval_loss, color: COLORS[3], points: true }]);
      }
      histBox.replaceChildren();
      if (c.sigma_hist) histogram(histBox, c.sigma_hist);
      histBox.append(el("p", { class: "skipped", text: c.skipped_count ?
        `${c.skipped_count} skipped step(s): ${c.skipped_steps.slice(-20).join(", ")}` : "no skipped steps" }));
    }
    // Rounds: add new ones, replace one only when it changed, so clips that play keep playing.
    for (const r of d.rounds) {
      const live = ["running", "starting"].includes(s.state);
      const sig = JSON.stringify([r, live]);
      const old = shown.get(r.step);
      if (old && old.sig === sig) continue;
      const node = roundView(r, live);
      if (old) old.node.replaceWith(node);
      else {
        const after = [...shown.entries()].filter(([st]) => st < r.step).sort((a, b) => b[0] - a[0])[0];
        after ? rounds.insertBefore(node, after[1].node) : rounds.append(node);
      }
      shown.set(r.step, { sig, node });
    }
    if (!d.rounds.length) rounds.replaceChildren(el("p", { class: "muted", text: "no validation round yet" }));
    else rounds.querySelectorAll(":scope > p").forEach((p) => p.remove());
    fill(side,
      d.notices.length || job ? el("h2", { text: "Notices and console" }) : null,
      d.notices.length ? el("ul", { class: "notices" }, d.notices.map((n) => el("li", { text: n }))) : null,
      job ? el("pre", { class: "console", text: d.console || "(no output yet)" }) : null,
      el("h2", { text: "Files written" }),
      d.files.length ? el("table", { class: "files" }, d.files.map((f) => el("tr", {},
        el("td", {}, f.url ? el("a", { href: fileURL(f.url), text: f.name }) : f.name),
        el("td", { text: f.kind + (f.kind === "checkpoint" && !f.intact ? " (incomplete)" : "") }),
        el("td", { text: fmt.size(f.size) })))) : el("p", { class: "muted", text: "nothing yet" }),
      el("h2", { text: "Resolved config" }),
      d.config ? el("details", {}, el("summary", { text: `from ${d.config_source}` }), el("pre", { text: JSON.stringify(d.config, null, 2) }))
        : el("p", { class: "muted", text: "this run's log predates the config record and it wrote no model card" }));
  }
  every(async () => {
    try { await refresh(); }
    catch (e) { if (e.status === 404) head.replaceChildren(el("p", { class: "error", text: `run '${id}' is gone (deleted or moved): ` }, el("a", { href: "/", text: "all runs" }))); else throw e; }
  });
}

async function comparePage() {
  const ids = PAGE.ids || [];
  if (ids.length < 2) {
    MAIN.replaceChildren(el("p", {}, "Pick two or more runs on the ", el("a", { href: "/", text: "Runs page" }), " and press Compare selected."));
    return;
  }
  const charts = el("div", { class: "charts" });
  const pickers = el("div", { class: "toolbar" });
  const clips = el("div", { id: "compare-clips" });
  MAIN.replaceChildren(el("h1", { text: `Comparing ${ids.length} runs` }), charts, el("h2", { text: "Validation, same prompt" }), pickers, clips);
  const loss = new LineChart(charts, "loss (smoothed)", { height: 260 });
  const evalChart = new LineChart(charts, "eval loss", { height: 180 });
  let prompt = null, step = "latest", last = null;
  function showClips() {
    const d = last;
    const keys = [...new Set(d.runs.flatMap((r) => (r.rounds || []).flatMap((x) => x.clips.map((c) => c.key))))];
    prompt = keys.includes(prompt) ? prompt : keys[0];
    const steps = [...new Set(d.runs.flatMap((r) => (r.rounds || []).map((x) => x.step)))].sort((a, b) => a - b);
    fill(pickers, "prompt ", el("select", { onchange: (e) => { prompt = e.target.value; showClips(); } },
      keys.map((k) => el("option", { value: k, selected: k === prompt, text: k }))),
      " step ", el("select", { onchange: (e) => { step = e.target.value; showClips(); } },
      ["latest", ...steps.map(String)].map((s) => el("option", { value: s, selected: s === step, text: s }))));
    clips.replaceChildren(...d.runs.map((r) => {
      // The newest round holding this prompt's clip: a round cut short by a stop holds none.
      const round = (r.rounds || []).find((x) => (step === "latest" || String(x.step) === step) && x.clips.some((c) => c.key === prompt));
      const clip = round && round.clips.find((c) => c.key === prompt);
      const url = clip && (clip.variants.trained || Object.values(clip.variants)[0]);
      return el("div", { class: "compare-col", "data-run": r.id }, el("h3", {}, el("a", { href: runURL(r.id), text: r.id })),
        url ? video(url, `step ${round.step}`) : el("p", { class: "muted", text: r.missing ? "run gone" : "no clip for this prompt and step" }));
    }));
  }
  let sig = null;
  every(async () => {
    const d = await getJSON("/api/compare?" + ids.map((id) => "id=" + encodeURIComponent(id)).join("&"));
    const xs = [...new Set(d.runs.flatMap((r) => r.steps || []))].sort((a, b) => a - b);
    const align = (r, key) => { const m = new Map((r.steps || []).map((s, i) => [s, r.series[key] ? r.series[key][i] : null])); return xs.map((x) => m.has(x) ? m.get(x) : null); };
    loss.update(xs, d.runs.map((r, i) => ({ label: r.id, values: align(r, r.series && r.series.loss_smooth ? "loss_smooth" : "loss"), color: COLORS[i % COLORS.length], width: 2 })));
    if (d.runs.some((r) => r.series && r.series.eval_loss)) evalChart.update(xs, d.runs.map((r, i) => ({ label: r.id, values: align(r, "eval_loss"), color: COLORS[i % COLORS.length], points: true })));
    else evalChart.box.hidden = true;
    const s = JSON.stringify(d.runs.map((r) => r.rounds));
    last = d;
    if (s !== sig) { sig = s; showClips(); }
  });
}

function startPage() {
  const config = el("input", { type: "text", name: "config", size: 60, placeholder: "/path/to/config.toml" });
  const sets = el("textarea", { name: "sets", rows: 3, cols: 60, placeholder: "one override a line, e.g. train.max_train_steps=100" });
  const msg = el("p", { class: "msg" });
  const go = el("button", { type: "submit" }, "Start");
  const form = el("form", { id: "start-form", onsubmit: async (e) => {
    e.preventDefault();
    go.disabled = true; msg.className = "msg"; msg.textContent = "checking the config…";
    try {
      const job = await postJSON("/api/jobs", { config: config.value, sets: sets.value.split("\n") });
      location.href = runURL(job.run_id);
    } catch (err) { msg.className = "msg error"; msg.textContent = err.message; go.disabled = false; }
  } }, el("label", {}, "config file ", config), el("label", {}, "overrides ", sets), go, msg);
  const list = el("div", { id: "jobs" });
  MAIN.replaceChildren(el("h1", { text: "Start a run" }),
    el("p", { class: "muted", text: `The same tuner train a terminal runs, started here with its output captured. A relative path is read from ${PAGE.folder}; the run's output_dir must lie in it.` }),
    form, el("h2", { text: "Runs started here" }), list);
  every(async () => {
    const d = await getJSON("/api/jobs");
    list.replaceChildren(d.jobs.length ? el("table", {}, d.jobs.map((j) => el("tr", { "data-job": j.id },
      el("td", { text: j.id }), el("td", {}, el("a", { href: runURL(j.run_id), text: j.run_id })), el("td", { text: j.config }),
      el("td", { text: j.running ? (j.stop_requested ? "stopping" : "running")
        : j.stop_requested && [130, -2].includes(j.exit_code) ? `stopped (exit ${j.exit_code})` : `exited ${j.exit_code}` }),
      el("td", {}, j.running ? el("button", { onclick: (e) => { e.target.disabled = true; postJSON(`/api/jobs/${j.id}/stop`); } }, "Stop") : null))))
      : el("p", { class: "muted", text: "none yet" }));
  });
}

function missingPage() {
  MAIN.replaceChildren(el("p", { class: "error", text: PAGE.what || "not found" }), el("a", { href: "/", text: "all runs" }));
}

({ runs: runsPage, run: runPage, compare: comparePage, start: startPage, missing: missingPage })[document.body.dataset.page]();
