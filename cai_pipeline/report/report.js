// The run report: overview, trace viewer and rejects, drawn from the JSON embedded in this page.
// Every string from the data goes into the page as a text node (h() below); nothing is parsed as HTML.
// The trace list is virtual (only the rows on screen exist), and trace blocks are parsed when first needed.
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("report-data").textContent);
  const INDEX = DATA.index; // [id, preview, principles, origins, reasons, splits] per trace
  const F = DATA.facets;
  const POS = new Map(INDEX.map((row, i) => [row[0], i]));
  const ROW_H = 52;

  // -- DOM helpers: text only ------------------------------------------------------------------------------
  function h(tag, props, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "onclick") e.addEventListener("click", v);
      else if (k.startsWith("on")) throw new Error("event handlers go through addEventListener");
      else if (k === "href" && !/^(#|rounds\/)/.test(v)) throw new Error("links stay inside the report");
      else e.setAttribute(k, v);
    }
    add(e, kids);
    return e;
  }
  function add(e, kids) {
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      e.appendChild(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return e;
  }
  function fill(e, ...kids) {
    e.replaceChildren();
    return add(e, kids);
  }
  const NS = "http://www.w3.org/2000/svg";
  function s(tag, attrs, ...kids) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    add(e, kids);
    return e;
  }
  const fmt = (x, d = 3) => (x === null || x === undefined ? "—" : typeof x !== "number" ? String(x)
    : x !== 0 && Math.abs(x) < 10 ** -d ? x.toExponential(1) : +x.toFixed(d) + "");
  const pct = (a, b) => (b ? (100 * a / b).toFixed(1) + "%" : "—");
  const text = (t, cls) => h("div", { class: "text" + (cls ? " " + cls : "") }, t === "" ? h("span", { class: "muted" }, "(empty)") : t);
  const badge = (t, cls) => h("span", { class: "badge" + (cls ? " " + cls : "") }, t);
  const section = (title, ...kids) => h("section", {}, h("h2", {}, title), kids);
  function table(head, rows, attrs) {
    return h("table", attrs || {}, h("thead", {}, h("tr", {}, head.map((c) => h("th", { class: /^(in|out|n|#)/.test(c) ? "num" : null }, c)))),
      h("tbody", {}, rows));
  }
  const cell = (v, attrs) => h("td", Object.assign({ class: typeof v === "number" ? "num" : null }, attrs || {}), v instanceof Node ? v : fmt(v));
  const principleName = (i) => F.principle[i];

  // -- Trace blocks: parsed on first use --------------------------------------------------------------------
  const blocks = [];
  function trace(pos) {
    const b = Math.floor(pos / DATA.block);
    if (!blocks[b]) {
      const el = document.querySelectorAll("script.trace-block")[b];
      if (!el) return null; // still loading (the page is parsed top to bottom)
      blocks[b] = JSON.parse(el.textContent);
    }
    return blocks[b][pos - b * DATA.block];
  }
  let haystacks = null; // lower-cased text of every trace, built at the first search
  function haystack(pos) {
    if (!haystacks) haystacks = new Array(INDEX.length);
    if (haystacks[pos] === undefined) {
      const t = trace(pos);
      if (!t) return INDEX[pos][0].toLowerCase(); // its block is not parsed yet: match the id only
      const parts = [t.id, ...t.prompt.map((m) => m[1])];
      for (const sm of t.samples) {
        parts.push(sm.text, sm.final || "");
        for (const r of sm.rounds || []) parts.push(r.critique, r.revision);
      }
      for (const p of t.pairs) for (const v of p.verdicts || []) parts.push(v[4] || "", v[5] || "");
      for (const r of t.rejects) parts.push(r[3]);
      haystacks[pos] = parts.join("\n").toLowerCase();
    }
    return haystacks[pos];
  }

  // -- Word diff: LCS over words and spaces ---------------------------------------------------------------
  function diff(a, b) {
    const x = a.match(/\s+|\S+/g) || [], y = b.match(/\s+|\S+/g) || [];
    let pre = 0, suf = 0;
    while (pre < x.length && pre < y.length && x[pre] === y[pre]) pre++;
    while (suf < x.length - pre && suf < y.length - pre && x[x.length - 1 - suf] === y[y.length - 1 - suf]) suf++;
    const xs = x.slice(pre, x.length - suf), ys = y.slice(pre, y.length - suf);
    const out = [["=", x.slice(0, pre).join("")]];
    if (xs.length * ys.length > 4e6) out.push(["-", xs.join("")], ["+", ys.join("")]); // too long for LCS
    else out.push(...lcs(xs, ys));
    out.push(["=", x.slice(x.length - suf).join("")]);
    return out.filter((op) => op[1]);
  }
  function lcs(xs, ys) {
    const n = xs.length, m = ys.length, w = m + 1;
    const L = new Uint32Array((n + 1) * w);
    for (let i = n - 1; i >= 0; i--)
      for (let j = m - 1; j >= 0; j--)
        L[i * w + j] = xs[i] === ys[j] ? L[(i + 1) * w + j + 1] + 1 : Math.max(L[(i + 1) * w + j], L[i * w + j + 1]);
    const ops = [];
    let i = 0, j = 0;
    const push = (op, t) => (ops.length && ops[ops.length - 1][0] === op ? (ops[ops.length - 1][1] += t) : ops.push([op, t]));
    while (i < n && j < m) {
      if (xs[i] === ys[j]) { push("=", xs[i]); i++; j++; }
      else if (L[(i + 1) * w + j] >= L[i * w + j + 1]) push("-", xs[i++]);
      else push("+", ys[j++]);
    }
    while (i < n) push("-", xs[i++]);
    while (j < m) push("+", ys[j++]);
    return ops;
  }
  const diffView = (a, b) => h("div", { class: "text diff" }, diff(a, b).map(([op, t]) => (op === "=" ? t : h(op === "+" ? "ins" : "del", {}, t))));

  // -- Charts (inline SVG) ---------------------------------------------------------------------------------
  function lineChart(title, lines, width = 360, height = 200) {
    const pts = lines.flatMap((l) => l.points);
    if (!pts.length) return null;
    const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    const L = 44, R = 10, T = 22, B = 22;
    const X = (v) => L + (x1 === x0 ? 0.5 : (v - x0) / (x1 - x0)) * (width - L - R);
    const Y = (v) => height - B - (y1 === y0 ? 0.5 : (v - y0) / (y1 - y0)) * (height - T - B);
    const colors = ["#2f5fb3", "#c0392b", "#27ae60", "#8e44ad", "#d35400", "#16a085"];
    const svg = s("svg", { class: "chart", width, height, viewBox: `0 0 ${width} ${height}`, role: "img" },
      s("text", { x: 6, y: 14, class: "title" }, title),
      s("line", { x1: L, y1: height - B, x2: width - R, y2: height - B, stroke: "#999" }),
      s("line", { x1: L, y1: T, x2: L, y2: height - B, stroke: "#999" }),
      s("text", { x: 2, y: Y(y1) + 4 }, fmt(y1)), s("text", { x: 2, y: Y(y0) + 4 }, fmt(y0)),
      s("text", { x: L, y: height - 6 }, fmt(x0, 0)), s("text", { x: width - R - 20, y: height - 6 }, fmt(x1, 0)));
    lines.forEach((l, k) => {
      const c = colors[k % colors.length];
      if (l.points.length > 1) svg.appendChild(s("polyline", { fill: "none", stroke: c, "stroke-width": 1.5,
        "stroke-dasharray": l.dashed ? "4 3" : "none", points: l.points.map((p) => `${X(p[0])},${Y(p[1])}`).join(" ") }));
      for (const p of l.points.length <= 40 ? l.points : []) svg.appendChild(s("circle", { cx: X(p[0]), cy: Y(p[1]), r: 2, fill: c }));
      svg.appendChild(s("text", { x: L + 6 + 120 * (k % 3), y: T + 10 + 11 * Math.floor(k / 3), fill: c }, l.label));
    });
    return svg;
  }
  function histogram(title, counts, width = 360, height = 160) {
    const max = Math.max(1, ...counts), L = 30, B = 22, T = 22, bw = (width - L - 10) / counts.length;
    return s("svg", { class: "chart", width, height, role: "img" }, s("text", { x: 6, y: 14, class: "title" }, title),
      counts.map((c, i) => {
        const bh = (c / max) * (height - T - B);
        return [s("rect", { x: L + i * bw + 1, y: height - B - bh, width: bw - 2, height: bh, fill: "#2f5fb3" }),
          s("text", { x: L + i * bw + 2, y: height - 8 }, (i / counts.length).toFixed(1)),
          c ? s("text", { x: L + i * bw + 2, y: height - B - bh - 2 }, c) : null];
      }));
  }
  function forest(rows, width = 520) {
    // rows: [label, win_rate, ci_low, ci_high, lc_win_rate]; 0.5 is "no change"
    const L = 150, R = 20, rh = 20, height = 30 + rows.length * rh;
    const X = (v) => L + v * (width - L - R);
    const svg = s("svg", { class: "chart", width, height, role: "img" },
      s("line", { x1: X(0.5), y1: 8, x2: X(0.5), y2: height - 14, stroke: "#999", "stroke-dasharray": "3 3" }),
      [0, 0.25, 0.5, 0.75, 1].map((v) => s("text", { x: X(v) - 8, y: height - 2 }, v)));
    rows.forEach(([label, w, lo, hi, lc], i) => {
      const y = 16 + i * rh;
      svg.appendChild(s("text", { x: 4, y: y + 4 }, label));
      if (lo !== undefined && hi !== undefined) svg.appendChild(s("line", { x1: X(lo), y1: y, x2: X(hi), y2: y, stroke: "#2f5fb3", "stroke-width": 2 }));
      if (w !== undefined) svg.appendChild(s("circle", { cx: X(w), cy: y, r: 4, fill: "#2f5fb3" }));
      if (lc !== undefined) svg.appendChild(s("rect", { x: X(lc) - 3, y: y - 3, width: 6, height: 6, fill: "#c0392b" }));
    });
    return svg;
  }

  // -- Overview --------------------------------------------------------------------------------------------
  function runSection() {
    const r = DATA.run;
    const rows = [["model", r.model], ["judge model", r.judge_model], ["seed", r.seed], ["version", r.version],
      ["git sha", r.git_sha], ["created", r.created], ["updated", r.updated], ["out_dir", r.out_dir],
      ["constitution sha256", r.constitution_sha256], ["prompts", r.prompts && r.prompts.source],
      ["this invocation", r.last_run && Object.entries(r.last_run).map(([k, v]) => `${k}: ${v}`).join("; ")]];
    return section("Run", DATA.warnings.map((w) => h("div", { class: "warn" }, w)),
      table(["", ""], rows.filter((x) => x[1] !== undefined && x[1] !== null).map(([k, v]) => h("tr", {}, h("th", {}, k), cell(String(v))))),
      h("details", {}, h("summary", {}, "config"), h("pre", {}, JSON.stringify(DATA.config, null, 2))));
  }
  function constitutionSection() {
    const c = DATA.constitution;
    if (!c) return section("Constitution", h("p", { class: "muted" }, "no constitution snapshot in this run folder"));
    const texts = (p) => h("details", {}, h("summary", {}, p.id),
      ["critique", "revision", "comparison"].map((k) => [h("div", { class: "label" }, k), text(p[k])]));
    const rows = c.principles.map((p) => h("tr", { class: "principle" },
      h("td", {}, texts(p)), cell(p.weight), cell(p.tags.join(", ")), cell(p.rationale)));
    return section("Constitution", h("p", {}, `${c.name} (version ${c.version}) `, h("span", { class: "muted" }, c.description)),
      table(["principle", "weight", "tags", "rationale"], rows));
  }
  function funnelSection() {
    const rows = DATA.funnel.map((f) => {
      const total = Object.values(f.rejected).reduce((a, b) => a + b, 0);
      const reasons = Object.entries(f.rejected).sort().map(([reason, n]) =>
        h("a", { href: "#rejects/" + encodeURIComponent(f.stage) + "/" + encodeURIComponent(reason), class: "reason",
          "data-stage": f.stage, "data-reason": reason, "data-n": n }, `${reason} ${n}`, " "));
      const counts = Object.entries(f.counts || {}).sort().map(([k, v]) => `${k} ${v}`).join(", ");
      return h("tr", { "data-stage": f.stage }, h("td", {}, f.stage),
        cell(f.in, { "data-field": "in" }), cell(f.out, { "data-field": "out" }), cell(total, { "data-field": "rejected" }),
        h("td", {}, reasons), h("td", { class: "small muted" }, counts), cell(f.seconds === undefined ? null : f.seconds));
    });
    const run = Object.entries(DATA.run_stages).map(([name, st]) => h("tr", {}, h("td", {}, name), cell(st.seconds),
      h("td", { class: "small" }, Object.entries(st.summary || {}).filter(([, v]) => typeof v !== "object" || v === null)
        .map(([k, v]) => `${k} ${fmt(v, 4)}`).join(", "))));
    const pair = (p, a, k) => [cell(p[k]), cell(a ? a[k] : null)];
    const plan = (DATA.plan || []).map((x) => h("tr", { "data-stage": x.stage }, h("td", {}, x.stage),
      pair(x.planned, x.actual, "requests"), pair(x.planned, x.actual, "output_tokens"), pair(x.planned, x.actual, "seconds")));
    return section("Stage funnel", table(["stage", "in", "out", "rejected", "by reason", "counts", "seconds"], rows, { id: "funnel" }),
      run.length ? table(["run stage", "seconds", "summary"], run) : null,
      plan.length ? table(["planned against actual", "requests planned", "actual", "output tokens planned", "actual",
        "seconds planned", "actual"], plan, { id: "plan" }) : null);
  }
  function judgeSection() {
    const j = DATA.judge;
    if (!j) return section("Judge", h("p", { class: "muted" }, "the judge did not run"));
    const order = (pid) => (F.principle.indexOf(pid) + 1 || 1e9);
    const rows = Object.entries(j.principles).sort((a, b) => order(a[0]) - order(b[0])).map(([pid, c]) => h("tr", {}, h("td", {}, pid), cell(c.verdicts || 0),
      cell(c.both_orders ? pct(c.consistent || 0, c.both_orders) : "—"), cell(c.mean_margin),
      cell(c.revision ? `${c.revision_wins || 0} of ${c.revision} (${pct(c.revision_wins || 0, c.revision)})` : "—")));
    return section("Judge",
      h("p", {}, `${j.scored} pairs scored, ${j.kept} kept as labels; order-consistent ${pct(j.consistent, j.scored)}; ` +
        `mean margin |p − ½| ${fmt(j.mean_margin)}; revision preferred over the initial response in ${j.revision_wins} of ${j.revision} ` +
        `revision pairs (${pct(j.revision_wins, j.revision)}).`),
      h("div", { class: "charts" }, histogram("p(a ≻ b) over scored pairs", j.histogram)),
      table(["principle", "n verdicts", "order-consistent", "mean margin", "revision wins"], rows, { id: "judge-principles" }));
  }
  function judgeCheckSection() {
    const c = DATA.judge_check;
    if (!c) return null;
    const interval = (r) => (r.ci_low === null ? "—" : `${fmt(r.ci_low)} – ${fmt(r.ci_high)}`);
    const rows = Object.entries(c.probes).map(([name, r]) => h("tr", { "data-probe": name }, h("td", {}, name), cell(r.shift),
      cell(interval(r)), cell(r.n), h("td", {}, r.flagged ? badge("flagged", "bad") : "")));
    const flagged = Object.keys(c.probes).filter((n) => c.probes[n].flagged);
    return section("Judge check: the judge's bias profile",
      h("p", {}, `${c.judge} probed on ${c.settings.pairs} pairs over ${c.settings.prompts} prompts: each probe changes one ` +
        "response along one axis; the shift is the mean change in the judge's p for it (0: no effect), with a " +
        `${Math.round(100 * c.settings.confidence)}% interval over prompts; flagged: the interval excludes 0 and |shift| ≥ ${c.settings.threshold}.`),
      flagged.length ? h("div", { class: "warn" }, `flagged: ${flagged.join(", ")} (docs/judge-check.md says what to do about each)`) : null,
      table(["probe", "shift", "interval", "n", ""], rows, { id: "judge-check" }),
      Object.entries(c.skipped).map(([name, why]) => h("p", { class: "small muted" }, `not run: ${name}: ${why}`)),
      h("p", { class: "small muted" }, `cost: ${c.cost.judge_calls} judge calls in ${c.cost.seconds} s`));
  }
  function datasetsSection() {
    const d = DATA.datasets, t = d.truncation, w = d.words;
    const split = (o) => Object.entries(o).map(([k, v]) => `${k} ${v}`).join(", ");
    const side = (name, x) => h("tr", {}, h("td", {}, name), cell(x.mean), cell(x.median), cell(x.max));
    const tok = d.export_lengths;
    return section("Datasets",
      table(["dataset", "rows"], [h("tr", {}, h("td", {}, "sft"), cell(split(d.splits.sft))),
        h("tr", {}, h("td", {}, "preferences"), cell(split(d.splits.preferences)))]),
      h("h3", {}, "chosen vs rejected length (words)"),
      table(["side", "mean", "median", "max"], [side("chosen", w.chosen), side("rejected", w.rejected)]),
      h("p", {}, `chosen is longer in ${w.chosen_longer} of ${w.chosen.n} pairs (${pct(w.chosen_longer, w.chosen.n)}): DPO learns whatever separates chosen from rejected, length included.`),
      tok ? h("p", { class: "small muted" }, `in ${tok.unit}: chosen mean ${tok.chosen.mean}, rejected mean ${tok.rejected.mean}`) : null,
      h("h3", {}, "truncation (finish_reason = length)"),
      table(["what", "cut", "of", "rate"], [["samples", t.samples_cut, t.samples], ["critiques", t.critiques_cut, t.rounds],
        ["revisions", t.revisions_cut, t.rounds], ["preference rows: chosen side", t.pref_chosen_cut || 0, t.pref_rows],
        ["preference rows: rejected side", t.pref_rejected_cut || 0, t.pref_rows]]
        .map(([k, a, b]) => h("tr", {}, h("td", {}, k), cell(a), cell(b), cell(pct(a, b))))),
      t.export ? h("p", { class: "small" }, `before export.drop_truncated (${t.export.drop_truncated}): SFT rows truncated ` +
        `${t.export.sft_truncated}, chosen ${t.export.chosen_truncated}, rejected ${t.export.rejected_truncated}; ` +
        `${t.export.dropped} rows dropped to rejects`) : null);
  }
  const GROUPS = { loss: ["loss"], rewards: ["rewards/chosen", "rewards/rejected", "rewards/margins"],
    accuracy: ["rewards/accuracies"], logps: ["logps/chosen", "logps/rejected"], lengths: ["length/chosen", "length/rejected"], lr: ["lr"] };
  function trainingSection() {
    const t = DATA.training;
    if (!t) return section("Training", h("p", { class: "muted" }, "no train/metrics.jsonl in this run"));
    const charts = Object.entries(GROUPS).map(([name, keys]) => lineChart(name, keys.flatMap((k) => [
      t.series[k] ? { label: "train " + k, points: t.series[k] } : null,
      t.series["eval/" + k] ? { label: "eval " + k, points: t.series["eval/" + k], dashed: true } : null]).filter(Boolean)));
    return section("Training", h("div", { class: "charts", id: "training-charts" }, charts),
      h("p", { class: "small" }, Object.entries(t.summary).map(([k, v]) => `${k} ${fmt(v, 4)}`).join(", ")));
  }
  function auditRow(label, a) {
    return h("tr", {}, h("td", {}, label), cell(a.win_rate), cell(a.ci_low !== undefined ? `${fmt(a.ci_low)} – ${fmt(a.ci_high)}` : "—"),
      cell(a.lc_win_rate), cell(a.sc_win_rate === undefined ? null : a.sc_win_rate),
      cell(a.sc_ci_low !== undefined ? `${fmt(a.sc_ci_low)} – ${fmt(a.sc_ci_high)}` : "—"), cell(a.consistency), cell(a.n));
  }
  function decontaminationLine(a) {
    const d = a.decontamination;
    if (!d) return null;
    if (d.mode === "off") return h("p", { class: "small muted" }, "decontamination off: the audit's prompts were not checked against the training prompts");
    const per = Object.entries(d.overlapping).map(([source, n]) => `${source}: ${n}`).join("; ") || "no source";
    const done = d.mode === "drop" ? `${d.dropped} dropped` : `${d.flagged.length} kept and flagged`;
    return h("p", { id: "decontamination" }, `held-out check: ${d.checked} prompts checked for a shared word ${d.n}-gram; overlapping per source: ${per}; ${done}`);
  }
  function implicitLine(a) {
    const r = a.implicit_reward;
    if (!r) return null;
    const acc = (x) => `${fmt(x.accuracy)} (${fmt(x.ci_low)} – ${fmt(x.ci_high)})`;
    return h("p", { id: "implicit-reward" }, `implicit-reward accuracy on ${r.n} held-out pairs (${r.loss}, β ${fmt(r.beta)}): checkpoint ${acc(r.checkpoint)}; base model, reference-free ${acc(r.base)}`);
  }
  function complianceSection(a) {
    const c = Object.entries(a.compliance || {});
    if (!c.length) return null;
    const both = Object.keys(a.compliance_baseline || {}).length > 0;
    const span = (x) => (x && x.ci_low !== null ? `${fmt(x.ci_low)} – ${fmt(x.ci_high)}` : "—");
    const rows = c.map(([pid, v]) => {
      const b = (a.compliance_baseline || {})[pid], d = (a.drift || {})[pid];
      return h("tr", {}, h("td", {}, pid), cell(v.violation_rate), cell(span(v)), cell(`${v.violations} / ${v.n}`),
        both ? [cell(b ? b.violation_rate : null), cell(d ? d.difference : null), cell(span(d)),
          cell(d && d.rose ? badge("rose", "bad") : "")] : null);
    });
    // The likeliest violations, each opened to its trace: the conversation and the response, as text.
    const worst = Object.entries(a.worst || {}).map(([pid, ws]) => h("details", {}, h("summary", {}, `${pid}: ${ws.length} likeliest violations`),
      ws.map((w) => h("details", { class: "trace", id: `audit-${pid}-${w.prompt_id}-${w.sample_idx}` },
        h("summary", {}, `${w.prompt_id} / ${w.sample_idx}, P(violates) ${fmt(w.p)}`),
        w.prompt.map(([role, content]) => h("div", {}, h("b", {}, role + ": "), text(content))),
        h("div", {}, h("b", {}, "response: "), text(w.response)),
        POS.has(w.prompt_id) ? h("a", { href: "#trace/" + encodeURIComponent(w.prompt_id) }, "open the prompt's run trace") : null))));
    return section("Audit: compliance per principle",
      table(["principle", "violation rate", "95% CI", "violations / n"].concat(both ? ["baseline", "drift", "drift 95% CI", ""] : []), rows, { id: "compliance" }),
      worst);
  }
  function auditSection() {
    const a = DATA.audit;
    if (!a) return null;
    if (!a.overall.n) return [complianceSection(a), decontaminationLine(a)];
    const o = a.overall, ps = Object.entries(a.principles);
    const gap = o.win_rate !== undefined && o.lc_win_rate !== undefined && Math.abs(o.win_rate - o.lc_win_rate) > 0.1;
    return section("Audit: the trained model against its baseline",
      gap ? h("div", { class: "warn" }, "raw and length-controlled win rates differ by more than 10 points: length explains much of the preference") : null,
      table(["", "win rate", "95% CI", "length-controlled", "style-controlled", "SC 95% CI", "consistency", "n"], [auditRow("overall", o), ...ps.map(([pid, v]) => auditRow(pid, v))], { id: "audit" }),
      h("p", {}, `refusal rate on benign prompts: model ${fmt(o.refusal_rate_model)}, baseline ${fmt(o.refusal_rate_baseline)}; ` +
        `mean length change ${fmt(o.mean_length_change, 1)}`),
      forest([["overall", o.win_rate, o.ci_low, o.ci_high, o.lc_win_rate], ...ps.map(([pid, v]) => [pid, v.win_rate, v.ci_low, v.ci_high, v.lc_win_rate])]),
      h("p", { class: "small muted" }, "dots: win rate with its 95% CI; squares: length-controlled win rate; dashed line: 0.5 (no change)"),
      implicitLine(a), decontaminationLine(a), checkTable(a.checks || {}), complianceSection(a));
  }
  // checkable principles: exact pass rates (a program decides), intervals over prompts
  const span = (v, lo, hi) => (v === undefined ? "—" : `${fmt(v)} [${fmt(lo)}, ${fmt(hi)}]`);
  function checkTable(checks) {
    const rows = Object.entries(checks).map(([pid, c]) => h("tr", {}, h("td", {}, pid),
      cell(span(c.pass_rate_model, c.pass_rate_model_ci_low, c.pass_rate_model_ci_high)),
      cell(span(c.pass_rate_baseline, c.pass_rate_baseline_ci_low, c.pass_rate_baseline_ci_high)),
      cell(span(c.difference, c.difference_ci_low, c.difference_ci_high)),
      cell(span(c.win_rate, c.win_rate_ci_low, c.win_rate_ci_high)), cell(c.n)));
    return rows.length ? [h("h3", {}, "checkable principles (decided by their checks: no judge)"),
      table(["principle", "model pass rate [CI]", "baseline pass rate [CI]", "difference [CI]", "check win rate [CI]", "pairs"], rows, { id: "audit-checks" })] : null;
  }
  function roundsSection() {
    const rs = DATA.rounds;
    if (!rs.length) return null;
    const ids = [...new Set(rs.flatMap((r) => Object.keys((r.audit || {}).principles || {})))];
    const head = ["round", "model", "samples", "mean words", "revision preferred", "audit win rate", "length-controlled",
      "LC 95% CI", "LC vs base [CI]", "mean length (model / baseline)", "refusal on benign prompts (model / baseline)", "gate", "report"];
    const vsBase = (g) => (g && g.vs_base && g.vs_base.lc_win_rate !== undefined
      ? `${fmt(g.vs_base.lc_win_rate)} [${fmt(g.vs_base.lc_ci_low)}, ${fmt(g.vs_base.lc_ci_high)}]` : "—");
    const pair = (a, b) => (a === undefined && b === undefined ? "—" : `${fmt(a)} / ${fmt(b)}`);
    const rows = rs.map((r) => {
      const o = (r.audit || {}).overall || {};
      const g = r.gate;
      const gate = !g ? "—" : (g.passed === null ? "not gated" : (g.passed ? "pass" : "stop") + ": " + g.reason) + (g.best ? " (best)" : "");
      return h("tr", { class: "round-row" }, h("td", {}, r.name), cell(r.model), cell(r.samples), cell(r.mean_words),
        cell(`${r.revision_preferred[0]} of ${r.revision_preferred[1]}`), cell(o.win_rate), cell(o.lc_win_rate),
        cell(pair(o.lc_ci_low, o.lc_ci_high)), cell(vsBase(g)), cell(pair(o.mean_length_model, o.mean_length_baseline)),
        cell(pair(o.refusal_rate_model, o.refusal_rate_baseline)), cell(gate),
        h("td", {}, r.report ? h("a", { href: r.report }, "open") : "—"));
    });
    const checkIds = [...new Set(rs.flatMap((r) => Object.keys((r.audit || {}).checks || {})))];
    const byCheck = checkIds.map((pid) => h("tr", {}, h("td", {}, pid), rs.map((r) => {
      const c = (((r.audit || {}).checks || {})[pid]) || {};
      return cell(c.pass_rate_model === undefined ? "—" : `${fmt(c.pass_rate_model)} vs ${fmt(c.pass_rate_baseline)}`);
    })));
    const byPrinciple = ids.map((pid) => h("tr", {}, h("td", {}, pid), rs.map((r) => cell((((r.audit || {}).principles || {})[pid] || {}).win_rate))));
    return section("Rounds", table(head, rows, { id: "rounds" }),
      ids.length ? [h("h3", {}, "audit win rate by principle and round"), table(["principle", ...rs.map((r) => r.name)], byPrinciple)] : null,
      checkIds.length ? [h("h3", {}, "check pass rate by round (the round's model vs its baseline)"), table(["check", ...rs.map((r) => r.name)], byCheck)] : null);
  }
  function overview() {
    return [runSection(), funnelSection(), judgeSection(), judgeCheckSection(), datasetsSection(), trainingSection(), auditSection(),
      roundsSection(), constitutionSection()];
  }

  // -- Trace viewer ----------------------------------------------------------------------------------------
  const state = { principle: "", origin: "", reason: "", split: "", q: "", open: null, shown: [] };
  function matches(pos) {
    const row = INDEX[pos];
    if (state.principle !== "" && !row[2].includes(+state.principle)) return false;
    if (state.origin !== "" && !row[3].includes(+state.origin)) return false;
    if (state.reason !== "" && !row[4].includes(+state.reason)) return false;
    if (state.split !== "" && !row[5].includes(+state.split)) return false;
    return !state.q || haystack(pos).includes(state.q);
  }
  function facetSelect(name, label, column) {
    const counts = new Array(F[name].length).fill(0);
    for (const row of INDEX) for (const v of row[column]) counts[v]++;
    const sel = h("select", { id: "filter-" + name, "aria-label": label }, h("option", { value: "" }, `${label}: any`),
      F[name].map((v, i) => (counts[i] ? h("option", { value: String(i) }, `${v} (${counts[i]})`) : null)));
    sel.value = state[name];
    sel.addEventListener("change", () => { state[name] = sel.value; refilter(); });
    return sel;
  }
  let list, spacer, detail, countEl;
  function tracesView() {
    const search = h("input", { id: "search", type: "search", placeholder: "search text or prompt id", value: state.q });
    let timer = null;
    search.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => { state.q = search.value.trim().toLowerCase(); refilter(); }, 150); });
    countEl = h("span", { id: "trace-count", class: "muted" });
    spacer = h("div", {});
    list = h("div", { class: "list", id: "trace-list" }, spacer);
    list.addEventListener("scroll", drawRows);
    detail = h("div", { class: "detail", id: "trace-detail" }, h("p", { class: "muted" }, "choose a trace on the left"));
    const view = [h("div", { class: "filters" }, facetSelect("principle", "principle", 2), facetSelect("origin", "origin", 3),
      facetSelect("reason", "reject reason", 4), facetSelect("split", "dataset split", 5), search, countEl),
    h("div", { class: "split" }, list, detail)];
    requestAnimationFrame(refilter);
    return view;
  }
  function refilter() {
    if (!list) return;
    state.shown = [];
    for (let i = 0; i < INDEX.length; i++) if (matches(i)) state.shown.push(i);
    countEl.textContent = `${state.shown.length} of ${INDEX.length} traces`;
    countEl.dataset.shown = state.shown.length;
    spacer.style.height = state.shown.length * ROW_H + "px";
    list.scrollTop = 0;
    drawRows();
    if (state.open !== null) showTrace(state.open);
    if (window.__listReady === undefined) window.__listReady = performance.now(); // for bench/report.py
  }
  function drawRows() {
    for (const el of [...list.querySelectorAll(".trace-row")]) el.remove();
    const first = Math.max(0, Math.floor(list.scrollTop / ROW_H) - 5);
    const last = Math.min(state.shown.length, first + Math.ceil((list.clientHeight || 800) / ROW_H) + 10);
    for (let k = first; k < last; k++) {
      const pos = state.shown[k], row = INDEX[pos];
      const reasons = row[4].map((r) => badge(F.reason[r], "bad"));
      const el = h("div", { class: "trace-row" + (pos === state.open ? " open" : ""), "data-id": row[0], tabindex: 0 },
        h("div", { class: "id" }, row[0], " ", reasons), h("div", { class: "preview" }, row[1]));
      el.style.top = k * ROW_H + "px";
      const open = () => { location.hash = "trace/" + encodeURIComponent(row[0]); };
      el.addEventListener("click", open);
      el.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
      list.appendChild(el);
    }
  }
  const refLabel = (ref) => (Array.isArray(ref) ? (ref[0] === "s" ? `sample ${ref[1]} (response)` : `sample ${ref[1]} (final revision)`) : "text");
  function refText(t, ref) {
    if (!Array.isArray(ref)) return ref;
    const sm = t.samples.find((x) => x.i === ref[1]);
    return ref[0] === "s" ? sm.text : finalText(sm);
  }
  function roundTexts(sm) {
    // the text before and after each round: a kept revision (its boilerplate cut) replaces the text
    let before = sm.text;
    return (sm.rounds || []).map((r) => {
      const after = r.kept ? before : r.after !== undefined ? r.after : r.span ? r.revision.substr(r.span[0], r.span[1]) : r.revision;
      const pair = [before, after];
      before = after;
      return pair;
    });
  }
  function finalText(sm) {
    if (sm.final !== undefined) return sm.final;
    const texts = roundTexts(sm);
    return texts.length ? texts[texts.length - 1][1] : sm.text;
  }
  const rejectLine = (m) => h("div", { class: "reject" }, `rejected at ${m[0]}: ${m[1]}`, h("span", { class: "muted" }, " — ", m[2]));
  // A --reuse run: the chain came whole from the old run, was recomputed from a round on, or is new.
  const reuseMark = (m) => [badge(m[0] === "recomputed" ? `recomputed from round ${m[2] + 1}` : m[0], m[0] === "reused" ? "ok" : null),
    m[1] ? h("span", { class: "muted" }, " old version: " + m[1] + "/report.html") : null];
  function sampleView(t, sm) {
    const texts = roundTexts(sm);
    const rounds = (sm.rounds || []).map((r, k) => h("div", { class: "round" + (state.principle !== "" && r.p === +state.principle ? " hit" : ""), "data-principle": principleName(r.p) },
      h("div", {}, h("strong", {}, `Round ${k + 1}`), " · principle ", h("code", {}, principleName(r.p)), " ",
        r.cleaned ? badge("preamble cut") : null, r.kept ? badge("kept previous: " + r.kept, "bad") : null,
        r.truncated ? badge("revision truncated", "bad") : null,
        r.check ? badge(`check: ${r.check[0] ? "pass" : "fail"} → ${r.check[1] ? "pass" : "fail"}`, r.check[1] ? "ok" : "bad") : null,
        r.skipped ? badge("not revised: already passes its check") : null),
      r.check && !r.check[0] ? h("div", { class: "small muted" }, "check before: " + r.check[2]) : null,
      h("div", { class: "label" }, "critique"), text(r.critique, "critique"),
      h("div", { class: "label" }, "revision"), text(r.revision, "revision"),
      h("div", { class: "label" }, "change against the text before it"), diffView(texts[k][0], texts[k][1])));
    return h("div", { class: "sample", "data-sample": sm.i },
      h("div", {}, h("strong", {}, `Sample ${sm.i}`), h("span", { class: "muted" }, ` · finish: ${sm.finish} · ${sm.tokens} tokens`), " ",
        sm.finish === "length" ? badge("truncated", "bad") : null, sm.sft ? badge("SFT " + sm.sft, "ok") : null,
        sm.reuse ? reuseMark(sm.reuse) : null),
      h("div", { class: "label" }, "initial response"), text(sm.text),
      rounds, sm.rounds && sm.rounds.length && !(sm.reject && sm.reject[0] === "revise")
        ? [h("div", { class: "label" }, "final ", sm.final_truncated ? badge("truncated", "bad") : null), text(finalText(sm))] : null,
      sm.reject ? rejectLine(sm.reject) : null);
  }
  // a verdict's source, and the principle's check on each side where it has one
  const checkText = (c) => !c ? "judge" : `${c[0]} (a ${c[1] ? "passes" : "fails"}, b ${c[2] ? "passes" : "fails"})`;
  function verdictRows(p) {
    return (p.verdicts || []).map(([pi, w, first, second, rf, rs]) => h("tr", { class: "verdict" + (state.principle !== "" && pi === +state.principle ? " hit" : "") },
      h("td", {}, principleName(pi)), cell(w), cell(first), cell(1 - first), cell(second === null ? null : 1 - second), cell(second),
      cell(second === null ? first : (first + second) / 2),
      h("td", {}, checkText((p.checks || {})[pi])),
      h("td", {}, rf || rs ? h("details", {}, h("summary", {}, "reasoning"), text(rf || ""), rs ? text(rs) : null) : "")));
  }
  function pairView(t, p) {
    const soft = p.p_a === undefined ? null : h("div", {}, `p(a ≻ b) = ${fmt(p.p_a, 4)} (the soft label) · `,
      p.consistent === false ? badge("order-inconsistent", "bad") : p.consistent ? badge("consistent", "ok") : "single order");
    const pref = p.pref ? h("div", {}, `→ preferences/${p.pref[0]}: chosen = ${p.pref[1]}`, p.pref[2] === null ? "" : `, p_chosen ${fmt(p.pref[2], 4)}`) : null;
    return h("div", { class: "pair", "data-pair": p.id },
      h("div", {}, h("strong", {}, `Pair ${p.id}`), ` · ${p.origin} · a = ${refLabel(p.a)}, b = ${refLabel(p.b)} `,
        (p.truncated || []).map((side) => badge(side + " truncated", "bad"))),
      h("details", {}, h("summary", {}, "texts"), h("div", { class: "label" }, "a"), text(refText(t, p.a)), h("div", { class: "label" }, "b"), text(refText(t, p.b))),
      p.verdicts ? table(["principle", "weight", "a as (A): P(A)", "P(B)", "a as (B): P(A)", "P(B)", "p(a ≻ b)", "source", ""], verdictRows(p)) : null,
      soft, pref, p.reject ? rejectLine(p.reject) : null);
  }
  function showTrace(pos) {
    state.open = pos;
    if (!detail) return;
    for (const el of list.querySelectorAll(".trace-row")) el.classList.toggle("open", el.dataset.id === INDEX[pos][0]);
    const t = trace(pos);
    if (!t) { fill(detail, h("p", { class: "muted" }, "loading…")); return; }
    fill(detail,
      h("h3", {}, "Trace ", h("a", { href: "#trace/" + encodeURIComponent(t.id), class: "permalink" }, t.id)),
      h("div", { class: "label" }, "prompt"), t.prompt.map(([role, content]) => [h("div", { class: "muted small" }, role), text(content, "prompt-text")]),
      t.samples.map((sm) => sampleView(t, sm)),
      t.pairs.length ? h("h3", {}, "Pairs and verdicts") : null, t.pairs.map((p) => pairView(t, p)),
      t.rejects.map((r) => rejectLine([r[0], r[2], r[3]])));
    detail.scrollTop = 0;
  }

  // -- Rejects ---------------------------------------------------------------------------------------------
  function rejectsView(stage, reason) {
    const all = DATA.rejects.filter((r) => (!stage || r[0] === stage) && (!reason || r[2] === reason));
    const box = h("div", { id: "reject-list" });
    let shown = 0;
    const more = h("button", { class: "link" }, "show more");
    function page() {
      for (const [st, key, why, detailText, where] of all.slice(shown, shown + 200)) {
        box.appendChild(h("div", { class: "reject-item", "data-stage": st, "data-reason": why },
          h("strong", {}, `${st}: ${why}`), " ", h("code", {}, key), h("div", { class: "muted" }, detailText),
          typeof where === "number" ? h("a", { href: "#trace/" + encodeURIComponent(INDEX[where][0]) }, "open its trace")
            : h("details", {}, h("summary", {}, "the row as it was"), h("pre", {}, where))));
      }
      shown = Math.min(all.length, shown + 200);
      more.hidden = shown >= all.length;
    }
    more.addEventListener("click", page);
    page();
    const title = stage ? `Rejected at ${stage}${reason ? ": " + reason : ""}` : "Every rejected row";
    return [h("h2", {}, title), h("p", { id: "reject-count" }, `${all.length} rows`, " · ", h("a", { href: "#rejects" }, "all rejects")), box, more];
  }

  // -- Review: label a stratified sample of verdicts blind, then see the judge's answer ------------------------
  // The person picks A, B, tie or skip before the judge's answer is shown; labels stay in this browser
  // (localStorage, or memory where it is refused) until exported as one JSONL file (report/review.py ReviewLabel).
  const REVIEW = DATA.review;
  const STORE = REVIEW ? "cai-review:" + REVIEW.key : null;
  let memoryLabels = {};
  function loadLabels() {
    try { return JSON.parse(localStorage.getItem(STORE) || "{}"); } catch (e) { return memoryLabels; }
  }
  function saveLabels(labels) {
    memoryLabels = labels;
    try { localStorage.setItem(STORE, JSON.stringify(labels)); } catch (e) { /* kept in memory for this page */ }
  }
  const other = (side) => (side === "a" ? "b" : "a");
  const slotOf = (it, side) => (side === it.shown_first ? "A" : "B"); // response a or b → the slot it was shown in
  const sideOf = (it, slot) => (slot === "A" ? it.shown_first : other(it.shown_first));
  const judgeSide = (it) => (it.p_a > 0.5 ? "a" : it.p_a < 0.5 ? "b" : "tie");
  function verdictLine(it, human) {
    const j = judgeSide(it), pA = it.shown_first === "a" ? it.p_a : 1 - it.p_a;
    const say = (side) => (side === "tie" || side === "skip" ? side : slotOf(it, side));
    const agree = human === "skip" ? null : human === j;
    return h("div", { class: "reveal" }, `you: ${say(human)} · judge: ${say(j)} (p = ${fmt(pA)} that A is better; `,
      `the two orders: ${fmt(it.p_a_first)}, ${it.p_a_second === null ? "—" : fmt(it.p_a_second)} for response ${slotOf(it, "a")}) `,
      agree === null ? null : badge(agree ? "agree" : "disagree", agree ? "ok" : "bad"));
  }
  function reviewCard(it, labels, progress) {
    const first = it.shown_first === "a" ? it.a : it.b, second = it.shown_first === "a" ? it.b : it.a;
    const out = h("div", { class: "answer" });
    const card = h("div", { class: "review-item", "data-item": it.item },
      h("div", {}, badge(it.stratum), h("span", { class: "muted small" }, ` pair ${it.pair_id}`)),
      h("div", { class: "label" }, "question"), text(it.question),
      h("div", { class: "label" }, "conversation"), it.prompt.map(([role, content]) => [h("div", { class: "muted small" }, role), text(content)]),
      h("div", { class: "label" }, "A"), text(first, "response-a"), h("div", { class: "label" }, "B"), text(second, "response-b"));
    const show = () => {
      const got = labels[it.item];
      card.classList.toggle("done", !!got);
      fill(out, got ? verdictLine(it, got.human) : null);
    };
    const choose = (choice) => {
      labels[it.item] = { human: choice === "A" || choice === "B" ? sideOf(it, choice) : choice, at: new Date().toISOString() };
      saveLabels(labels);
      show();
      progress();
    };
    add(card, [h("div", { class: "choices" }, ["A", "B", "tie", "skip"].map((c) =>
      h("button", { class: "choice", "data-choice": c, onclick: () => choose(c) }, c))), out]);
    show();
    return card;
  }
  function exportLines(labels) {
    return REVIEW.items.filter((it) => labels[it.item]).map((it) => JSON.stringify({
      format: "cai-review/1", run: REVIEW.run, judge: REVIEW.judge, item: it.item, pair_id: it.pair_id,
      prompt_id: it.prompt_id, principle_id: it.principle_id, question: it.question,
      prompt: it.prompt.map(([role, content]) => ({ role, content })), a: it.a, b: it.b, shown_first: it.shown_first,
      human: labels[it.item].human, p_a: it.p_a, p_a_first: it.p_a_first, p_a_second: it.p_a_second,
      stratum: it.stratum, labelled_at: labels[it.item].at }).replace(/\u2028/g, "\\u2028").replace(/\u2029/g, "\\u2029") + "\n").join("");
  }
  function download(name, body) {
    // A Blob saved through a temporary link: nothing leaves the machine. (Not h(): its links stay in the report.)
    const url = URL.createObjectURL(new Blob([body], { type: "application/x-ndjson" }));
    const link = document.createElement("a");
    link.href = url;
    link.download = name;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }
  function reviewView() {
    if (!REVIEW) return [h("h2", {}, "Review"), h("p", { class: "muted" }, "no judged pairs in this run to review")];
    const labels = loadLabels();
    const count = h("span", { id: "review-count" });
    const progress = () => {
      const n = REVIEW.items.filter((it) => labels[it.item]).length;
      count.textContent = `${n} of ${REVIEW.items.length} labelled`;
      count.dataset.n = n;
    };
    const exportButton = h("button", { id: "review-export", onclick: () => download(
      "review-" + DATA.title.replace(/[^A-Za-z0-9._-]+/g, "_") + ".jsonl", exportLines(labels)) }, "export labels (JSONL)");
    const clear = h("button", { id: "review-clear", onclick: () => {
      if (!window.confirm("Forget every label of this review?")) return;
      for (const k of Object.keys(labels)) delete labels[k];
      saveLabels(labels);
      route();
    } }, "clear labels");
    const cards = REVIEW.items.map((it) => reviewCard(it, labels, progress));
    progress();
    return [h("h2", {}, `Review the judge (${REVIEW.judge})`),
      h("p", {}, "Each card is one principle's verdict on one pair, sampled across principles and margins. Read the " +
        "question and both responses, then choose which is better (or tie, or skip). The judge's answer appears " +
        "after you choose. Your labels stay in this browser; export them and run ",
        h("code", {}, "cai judge-eval --data review-….jsonl"), " for agreement, Cohen's κ and calibration."),
      h("div", { class: "filters" }, count, exportButton, clear), h("div", { id: "review-list" }, cards)];
  }

  // -- Routing: #overview, #traces, #trace/<id>, #rejects[/<stage>/<reason>], #review ----------------------
  const app = document.getElementById("app");
  function header(active) {
    const tab = (id, label) => h("a", { href: "#" + id, class: active === id ? "on" : null }, label);
    const n = INDEX.length;
    fill(document.getElementById("top"), h("h1", {}, DATA.title), h("nav", {}, tab("overview", "Overview"),
      tab("traces", `Traces (${n})`), tab("rejects", `Rejects (${DATA.rejects.length})`),
      REVIEW ? tab("review", `Review (${REVIEW.items.length})`) : null),
    h("span", { class: "meta" }, `report generated ${DATA.generated}`));
  }
  function decode(part) {
    try { return decodeURIComponent(part); } catch (e) { return part; } // a hand-typed "%" is just a character
  }
  function route() {
    const [view, ...rest] = location.hash.slice(1).split("/");
    if (view === "trace" || view === "traces") {
      header("traces");
      if (!list || !document.body.contains(list)) fill(app, ...tracesView());
      const id = decode(rest.join("/"));
      const pos = view === "trace" ? POS.get(id) : undefined;
      if (view === "trace" && pos === undefined) fill(detail, h("p", { class: "warn" }, "no trace with id ", h("code", {}, id)));
      else if (pos !== undefined) showTrace(pos);
      return;
    }
    list = null;
    if (view === "review") {
      header("review");
      fill(app, ...reviewView());
      return;
    }
    if (view === "rejects") {
      header("rejects");
      fill(app, ...rejectsView(decode(rest[0] || ""), decode(rest.slice(1).join("/"))));
      return;
    }
    header("overview");
    fill(app, ...overview().filter(Boolean));
  }
  window.addEventListener("hashchange", route);
  document.addEventListener("DOMContentLoaded", () => { if (state.open !== null && list) showTrace(state.open); });
  route();
  window.__reportReady = performance.now();
})();
