// whisper-coreml Studio: the queue and the cue editor, talking to this server's API only.
// Plain JavaScript, no build step and nothing from a CDN, so the page works offline.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "whisper-coreml.key";
const PREFS_STORE = "whisper-coreml.prefs";
const RULE_FIELDS = ["max_line_width", "max_lines", "max_cps", "min_duration", "max_duration"];
const TOL = 1e-6; // as subtitles.check_cues

let config = null;
const jobs = new Map(); // id -> status, as the server lists them
const pending = new Map(); // local id -> {name, fraction, error}: uploads not yet jobs

// --- HTTP -------------------------------------------------------------------------------------

function authHeaders() {
  const key = localStorage.getItem(KEY_STORE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function errorOf(response) {
  try {
    const body = await response.json();
    return new ApiError(response.status, body.error?.message || response.statusText);
  } catch {
    return new ApiError(response.status, `${response.status} ${response.statusText}`);
  }
}

// fetch with the key; a 401 asks for the key once and tries again
async function api(path, options = {}) {
  for (let attempt = 0; ; attempt++) {
    const response = await fetch(path, { ...options, headers: { ...(options.headers || {}), ...authHeaders() } });
    if (response.status === 401 && attempt === 0) {
      await askKey(localStorage.getItem(KEY_STORE) ? "That key was refused." : "");
      continue;
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }
}

let keyPrompt = null;
function askKey(message) {
  if (keyPrompt) return keyPrompt;
  $("key-button").hidden = false;
  keyPrompt = new Promise((resolve) => {
    const dialog = $("key-dialog");
    $("key-error").textContent = message;
    $("key-input").value = "";
    dialog.onclose = () => {
      const key = $("key-input").value.trim();
      if (key) localStorage.setItem(KEY_STORE, key);
      keyPrompt = null;
      resolve();
    };
    dialog.showModal();
  });
  return keyPrompt;
}

function toast(message, bad = false) {
  const el = $("toast");
  el.textContent = message;
  el.className = bad ? "toast bad" : "toast";
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, bad ? 6000 : 2500);
}

// --- time on the frame grid -------------------------------------------------------------------

// seconds per frame as the server's exact fraction [numerator, denominator]
const frameSeconds = (fd) => fd[0] / fd[1];
const toFrames = (seconds, fd) => Math.max(0, Math.round((seconds * fd[1]) / fd[0]));
const toSeconds = (frames, fd) => (frames * fd[0]) / fd[1];

function clock(seconds) {
  const ms = Math.max(0, Math.round(seconds * 1000));
  const h = Math.floor(ms / 3600000), m = Math.floor(ms / 60000) % 60, s = Math.floor(ms / 1000) % 60;
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(h)}:${pad(m)}:${pad(s)}.${pad(ms % 1000, 3)}`;
}

// "83.5", "1:23.5", "00:01:23,500" (seconds) or "00:01:23:12" (timecode at the grid's timebase)
function parseClock(text, fd) {
  const t = text.trim().replace(",", ".");
  if (!/^[\d:.]+$/.test(t)) return null;
  const parts = t.split(":");
  if (parts.length === 4) {
    const [h, m, s, f] = parts.map(Number);
    const timebase = Math.ceil(fd[1] / fd[0] - 1e-9);
    if ([h, m, s, f].some(Number.isNaN) || f >= timebase) return null;
    return toSeconds(((h * 60 + m) * 60 + s) * timebase + f, fd);
  }
  if (parts.length > 3) return null;
  let seconds = 0;
  for (const part of parts) {
    const n = Number(part);
    if (part === "" || Number.isNaN(n)) return null;
    seconds = seconds * 60 + n;
  }
  return seconds;
}

const duration = (s) => {
  const total = Math.round(s);
  return `${Math.floor(total / 60)}:${String(total % 60).padStart(2, "0")}`;
};

// --- the queue --------------------------------------------------------------------------------

function prefs() {
  try { return JSON.parse(localStorage.getItem(PREFS_STORE)) || {}; } catch { return {}; }
}

function savePrefs() {
  const p = {
    language: $("language").value,
    task: document.querySelector("input[name=task]:checked").value,
    fps: $("fps").value,
    formats: [...document.querySelectorAll("#formats input:checked")].map((i) => i.value),
    rules: Object.fromEntries(RULE_FIELDS.map((f) => [f, $(f).value])),
  };
  localStorage.setItem(PREFS_STORE, JSON.stringify(p));
}

function formatChips(container, selected, name) {
  container.replaceChildren(...config.formats.map((fmt) => {
    const label = document.createElement("label");
    label.innerHTML = `<input type="checkbox" name="${name}" value="${fmt}"><span>${fmt}</span>`;
    label.firstChild.checked = selected.includes(fmt);
    return label;
  }));
}

function option(value, text) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  return o;
}

function setupQueue() {
  const p = prefs();
  $("model").replaceChildren(option(config.model, config.model));
  $("model-pill").textContent = config.model;
  for (const [code, name] of config.languages) {
    $("language").append(option(code, name.charAt(0).toUpperCase() + name.slice(1)));
  }
  for (const rate of config.frame_rates) $("fps").append(option(rate, `${rate} fps`));
  if (!config.multilingual) {
    document.querySelector("input[name=task][value=translate]").disabled = true;
  }
  $("language").value = p.language ?? "";
  $("fps").value = p.fps ?? "";
  if (p.task && !(p.task === "translate" && !config.multilingual)) {
    document.querySelector(`input[name=task][value=${p.task}]`).checked = true;
  }
  formatChips($("formats"), p.formats || ["srt", "fcpxml"], "format");
  for (const f of RULE_FIELDS) $(f).value = p.rules?.[f] ?? +config.rules[f].toFixed(3);
  document.querySelector(".settings").addEventListener("change", savePrefs);

  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    enqueue([...e.dataTransfer.files]);
  });
  $("file-input").addEventListener("change", (e) => {
    enqueue([...e.target.files]);
    e.target.value = "";
  });
}

function formFields() {
  const fields = {
    response_format: "srt", // subtitles: cues are built from word timings, as the CLI does for .srt
    keep_media: "true",
    task: document.querySelector("input[name=task]:checked").value,
  };
  if ($("language").value) fields.language = $("language").value;
  if ($("fps").value) fields.fps = $("fps").value;
  for (const f of RULE_FIELDS) {
    if ($(f).value !== "" && Number($(f).value) !== config.rules[f]) fields[f] = $(f).value;
  }
  return fields;
}

let uploadChain = Promise.resolve();
function enqueue(files) {
  const fields = formFields();
  for (const file of files) {
    const local = `up_${Math.random().toString(36).slice(2)}`;
    pending.set(local, { name: file.name, fraction: 0, error: null });
    renderJobs();
    // one upload at a time: the server queues jobs one after another anyway
    uploadChain = uploadChain.then(() => upload(local, file, fields));
  }
}

function upload(local, file, fields) {
  return new Promise((resolve) => {
    const form = new FormData();
    for (const [k, v] of Object.entries(fields)) form.append(k, v);
    form.append("file", file, file.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/jobs");
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) { pending.get(local).fraction = e.loaded / e.total; renderJobs(); }
    };
    xhr.onload = async () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* an answer that is not ours */ }
      if (xhr.status === 202 && body) {
        pending.delete(local);
        jobs.set(body.id, body);
      } else if (xhr.status === 401) {
        await askKey("");
        resolve(upload(local, file, fields));
        return;
      } else {
        pending.get(local).error = body?.error?.message || `upload failed (${xhr.status})`;
      }
      renderJobs();
      resolve();
    };
    xhr.onerror = () => { pending.get(local).error = "the server could not be reached"; renderJobs(); resolve(); };
    xhr.send(form);
  });
}

const EXT = /\.([a-z0-9]{1,5})$/i;

function jobRow(id, name, state, fraction, meta, actions) {
  const li = document.createElement("li");
  li.className = `job ${state}`;
  li.dataset.id = id;
  const ext = (EXT.exec(name)?.[1] || "").toUpperCase();
  li.innerHTML = `<div class="kind"></div><div class="body"><div class="name"></div><div class="meta"></div>
    <div class="progress"><i></i></div></div><div class="actions"></div>`;
  li.querySelector(".kind").textContent = ext || "—";
  li.querySelector(".name").textContent = name;
  li.querySelector(".name").title = name;
  li.querySelector(".meta").append(...meta);
  li.querySelector(".progress i").style.width = `${Math.round(fraction * 100)}%`;
  li.querySelector(".actions").append(...actions);
  return li;
}

function span(text, cls) {
  const s = document.createElement("span");
  s.textContent = text;
  if (cls) s.className = cls;
  return s;
}

function button(text, cls, onclick, title) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.className = cls;
  if (title) b.title = title;
  b.addEventListener("click", onclick);
  return b;
}

function renderJobs() {
  const rows = [];
  for (const [id, up] of pending) {
    const meta = up.error ? [span("failed", "state failed"), span(up.error, "err")]
      : [span("uploading", "state uploading"), span(`${Math.round(up.fraction * 100)}%`)];
    const actions = up.error ? [button("Dismiss", "ghost small", () => { pending.delete(id); renderJobs(); })] : [];
    rows.push(jobRow(id, up.name, up.error ? "failed" : "uploading", up.fraction, meta, actions));
  }
  const list = [...jobs.values()].sort((a, b) => b.created_at - a.created_at);
  for (const job of list) {
    const p = job.progress;
    const meta = [span(job.status, `state ${job.status}`)];
    if (job.status === "running") meta.push(span(`${duration(p.seconds_done)} / ${duration(p.seconds_total)}`));
    else meta.push(span(duration(p.seconds_total)));
    if (job.task === "translate") meta.push(span("→ English"));
    if (job.status === "done" && job.finished_at > job.started_at) {
      const speed = p.seconds_total / (job.finished_at - job.started_at);
      const at = new Date(job.finished_at * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      meta.push(span(`finished ${at} · ${speed >= 10 ? Math.round(speed) : speed.toFixed(1)}× real time`));
    }
    if (job.error) meta.push(span(job.error, "err"));
    else if (job.notes?.length) meta.push(span(job.notes.join("; ")));
    const actions = [];
    if (job.status === "done") {
      actions.push(button("Edit cues", "primary small", () => { location.hash = `#/job/${job.id}`; }));
    } else if (job.status === "queued" || job.status === "running") {
      actions.push(button("Cancel", "ghost small", () => cancel(job.id)));
    }
    const fraction = job.status === "done" ? 1 : job.status === "queued" ? 0 : p.fraction;
    rows.push(jobRow(job.id, job.filename, job.status, fraction, meta, actions));
  }
  $("jobs").replaceChildren(...rows);
  $("jobs-empty").hidden = rows.length > 0;
  const running = list.filter((j) => j.status === "running" || j.status === "queued").length;
  $("queue-summary").textContent = list.length
    ? `${list.filter((j) => j.status === "done").length} done${running ? ` · ${running} in progress` : ""}` : "";
}

async function cancel(id) {
  try {
    const response = await api(`/v1/jobs/${id}`, { method: "DELETE" });
    jobs.set(id, await response.json());
    renderJobs();
  } catch (e) { toast(e.message, true); }
}

// --- live updates: Server-Sent Events read with fetch, so they carry the key ------------------

function setConnection(state) {
  const el = $("conn");
  el.className = `conn ${state}`;
  el.querySelector("span").textContent = { live: "live", down: "offline", "": "connecting" }[state];
}

async function listen() {
  let delay = 500;
  for (;;) {
    try {
      const response = await api("/v1/events", { cache: "no-store" });
      setConnection("live");
      delay = 500;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          onEvent(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch {
      setConnection("down");
      delay = Math.min(delay * 2, 8000);
    }
    await new Promise((r) => setTimeout(r, delay));
  }
}

function onEvent(block) {
  let type = "message", data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) type = line.slice(6).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trim();
  }
  if (type !== "jobs" || !data) return;
  jobs.clear();
  for (const job of JSON.parse(data)) jobs.set(job.id, job);
  renderJobs();
}

// --- rule checks, as subtitles.check_cues makes them -----------------------------------------

const WIDE = /[\u1100-\u115F\u2E80-\u303E\u3041-\u33FF\u3400-\u4DBF\u4E00-\u9FFF\uA000-\uA4CF\uAC00-\uD7A3\uF900-\uFAFF\uFE30-\uFE4F\uFF00-\uFF60\uFFE0-\uFFE6\u{1F300}-\u{1F64F}\u{1F900}-\u{1F9FF}\u{20000}-\u{3FFFD}]/u;
const MARK = /\p{Mn}/u;

// display columns, as subtitles.display_width: wide characters 2, combining marks 0
function displayWidth(text) {
  let width = 0;
  for (const ch of text) width += MARK.test(ch) ? 0 : WIDE.test(ch) ? 2 : 1;
  return width;
}

const linesOf = (text) => text.split("\n").map((l) => l.trim()).filter(Boolean);

// [{rule, text, bad}] for cue k: `bad` ones stop a save (the server would refuse them)
function breaches(cues, k, rules) {
  const fd = rules.frame_duration, frame = frameSeconds(fd);
  const cue = cues[k], out = [];
  const lines = linesOf(cue.text);
  const length = (cue.end - cue.start) * frame;
  if (!lines.length) out.push({ rule: "text", text: "Empty text", bad: true });
  if (cue.end <= cue.start) out.push({ rule: "order", text: "Ends before it starts", bad: true });
  if (k > 0 && cue.start < cues[k - 1].end) out.push({ rule: "order", text: `Overlaps cue ${k}`, bad: true });
  if (lines.length > rules.max_lines) out.push({ rule: "max_lines", text: `${lines.length} lines (max ${rules.max_lines})` });
  lines.forEach((line, i) => {
    const w = displayWidth(line);
    if (w > rules.max_line_width) out.push({ rule: "max_line_width", text: `Line ${i + 1}: ${w}/${rules.max_line_width} chars` });
  });
  if (length > 0) {
    const cps = lines.reduce((n, l) => n + [...l].length, 0) / length;
    if (cps > rules.max_cps + TOL) out.push({ rule: "max_cps", text: `${cps.toFixed(1)} cps (max ${rules.max_cps})` });
    if (length > rules.max_duration + TOL) out.push({ rule: "max_duration", text: `${length.toFixed(2)} s long (max ${rules.max_duration})` });
    if (length < rules.min_duration - TOL) out.push({ rule: "min_duration", text: `${length.toFixed(2)} s short (min ${rules.min_duration.toFixed(2)})` });
  }
  if (k + 1 < cues.length) {
    const gap = cues[k + 1].start - cue.end;
    if (gap >= 0 && gap < rules.min_gap_frames) {
      out.push({ rule: "min_gap", text: `Gap ${gap} frame${gap === 1 ? "" : "s"} (min ${rules.min_gap_frames})` });
    }
  }
  return out;
}

// --- the editor -------------------------------------------------------------------------------
// Cues are held in frames on the job's grid, so a nudge is exactly one frame and the times the
// page shows are the times the server stores.

const ed = {
  job: null, rules: null, fd: null, cues: [], revision: 0, history: [], future: [],
  dirty: false, saving: null, saveTimer: null, current: -1, duration: 0, caret: new Map(), typing: false,
};

function snapshot() { return JSON.stringify(ed.cues); }

function record() {
  ed.history.push(snapshot());
  if (ed.history.length > 300) ed.history.shift();
  ed.future = [];
}

function changed(structure) {
  ed.dirty = true;
  setSave("Unsaved changes", "");
  if (structure) renderCues(); else refreshChecks();
  clearTimeout(ed.saveTimer);
  ed.saveTimer = setTimeout(save, 700);
  updateHistoryButtons();
}

function undo() {
  if (!ed.history.length) return;
  ed.future.push(snapshot());
  ed.cues = JSON.parse(ed.history.pop());
  changed(true);
}

function redo() {
  if (!ed.future.length) return;
  ed.history.push(snapshot());
  ed.cues = JSON.parse(ed.future.pop());
  changed(true);
}

function updateHistoryButtons() {
  $("undo").disabled = !ed.history.length;
  $("redo").disabled = !ed.future.length;
}

function setSave(text, cls) {
  const el = $("save-state");
  el.textContent = text;
  el.className = `save-state ${cls}`;
}

async function openEditor(id) {
  $("queue-view").hidden = true;
  $("editor-view").hidden = false;
  let state;
  try {
    state = await (await api(`/v1/jobs/${id}/cues`)).json();
  } catch (e) {
    toast(e.message, true);
    location.hash = "#/";
    return;
  }
  load(state);
  ed.history = [];
  ed.future = [];
  updateHistoryButtons();
  $("editor-title").textContent = state.filename;
  $("crumbs").textContent = "";
  const player = $("player");
  $("no-media").textContent = "The media is not kept on the server for this job.";
  $("no-media").hidden = !!state.media;
  $("audio-only").hidden = !state.media || state.video;
  if (state.media) player.src = state.media; else player.removeAttribute("src");
  const rules = state.rules;
  $("grid-info").textContent = `${rules.fps} fps grid`;
  $("rules-line").textContent = `${rules.max_line_width} chars × ${rules.max_lines} lines · ${rules.max_cps} cps · ` +
    `${rules.min_duration.toFixed(2)}–${rules.max_duration} s · gap ${rules.min_gap_frames} frames`;
  const p = prefs();
  formatChips($("export-formats"), p.formats || ["srt", "fcpxml"], "export-format");
  $("export-version").replaceChildren(...config.fcpxml_versions.map((v) => option(v, v)));
  $("export-version").value = state.fcpxml_version;
  $("export-fps").replaceChildren(...config.frame_rates.map((r) => option(r, r)));
  $("export-fps").value = rules.fps;
  setSave(state.edited ? `Edited · revision ${state.revision}` : "Transcribed cues", "");
}

function load(state) {
  ed.job = state.id;
  ed.rules = state.rules;
  ed.fd = state.rules.frame_duration;
  ed.duration = state.duration;
  ed.revision = state.revision;
  ed.cues = state.cues.map((c) => ({ start: toFrames(c.start, ed.fd), end: toFrames(c.end, ed.fd), text: c.text }));
  ed.dirty = false;
  ed.current = -1;
  renderCues();
}

function closeEditor() {
  const player = $("player");
  player.pause();
  player.removeAttribute("src");
  player.load();
  ed.job = null;
  $("editor-view").hidden = true;
  $("queue-view").hidden = false;
  $("crumbs").textContent = "";
}

async function save() {
  clearTimeout(ed.saveTimer);
  if (!ed.dirty || !ed.job) return;
  if (ed.saving) { await ed.saving; return save(); }
  const firstBad = ed.cues.findIndex((_, k) => breaches(ed.cues, k, ed.rules).some((b) => b.bad));
  if (firstBad >= 0) {
    setSave(`Not saved: fix cue ${firstBad + 1}`, "bad");
    return;
  }
  const job = ed.job, sent = snapshot();
  const body = {
    revision: ed.revision,
    cues: ed.cues.map((c) => ({ start: toSeconds(c.start, ed.fd), end: toSeconds(c.end, ed.fd), text: c.text })),
  };
  setSave("Saving…", "");
  ed.saving = (async () => {
    try {
      const response = await api(`/v1/jobs/${job}/cues`, {
        method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      const state = await response.json();
      if (ed.job !== job) return;
      ed.revision = state.revision;
      if (snapshot() === sent) {
        ed.dirty = false;
        setSave(`Saved · revision ${state.revision}`, "ok");
      }
    } catch (e) {
      setSave(`Not saved: ${e.message}`, "bad");
    } finally {
      ed.saving = null;
    }
  })();
  await ed.saving;
}

function timecodeInput(k, edge) {
  const wrap = document.createElement("span");
  wrap.className = "tc";
  const minus = button("−1f", "", () => nudge(k, edge, -1), `Move the ${edge === "start" ? "in" : "out"} point one frame earlier`);
  const input = document.createElement("input");
  input.type = "text";
  input.className = edge;
  input.spellcheck = false;
  input.setAttribute("aria-label", `Cue ${k + 1} ${edge === "start" ? "in" : "out"} point`);
  input.value = clock(toSeconds(ed.cues[k][edge], ed.fd));
  input.addEventListener("change", () => {
    const seconds = parseClock(input.value, ed.fd);
    if (seconds === null) { input.classList.add("invalid"); return; }
    input.classList.remove("invalid");
    record();
    ed.cues[k][edge] = toFrames(seconds, ed.fd);
    changed(true);
  });
  const plus = button("+1f", "", () => nudge(k, edge, 1), `Move the ${edge === "start" ? "in" : "out"} point one frame later`);
  minus.dataset.nudge = `${edge}-1`;
  plus.dataset.nudge = `${edge}+1`;
  wrap.append(minus, input, plus);
  return wrap;
}

function nudge(k, edge, frames) {
  record();
  ed.cues[k][edge] = Math.max(0, ed.cues[k][edge] + frames);
  changed(true);
}

function setAtPlayhead(k, edge) {
  record();
  ed.cues[k][edge] = toFrames($("player").currentTime, ed.fd);
  changed(true);
}

// a balanced wrap into at most max_lines lines of max_line_width columns, breaking at spaces
function wrap(text, rules) {
  const words = text.split(/\s+/).filter(Boolean);
  const one = words.join(" ");
  if (displayWidth(one) <= rules.max_line_width || words.length < 2) return one;
  let best = one, score = Infinity;
  for (let i = 1; i < words.length; i++) {
    const a = words.slice(0, i).join(" "), b = words.slice(i).join(" ");
    const s = Math.max(displayWidth(a), displayWidth(b));
    if (s < score) { score = s; best = `${a}\n${b}`; }
  }
  return best;
}

function split(k) {
  const cue = ed.cues[k], text = cue.text;
  if (cue.end - cue.start < 2) { toast("A cue needs two frames to split", true); return; }
  let at = ed.caret.get(k);
  if (!(at > 0 && at < text.length)) { // no caret inside: the space nearest the middle
    const spaces = [...text.matchAll(/\s+/g)].map((m) => m.index);
    if (!spaces.length) { toast("Nothing to split: put the cursor where the cue should break", true); return; }
    at = spaces.reduce((a, b) => (Math.abs(b - text.length / 2) < Math.abs(a - text.length / 2) ? b : a));
  }
  const first = text.slice(0, at).trim(), second = text.slice(at).trim();
  if (!first || !second) { toast("Put the cursor between words to split there", true); return; }
  const gap = ed.rules.min_gap_frames;
  const share = first.replace(/\s/g, "").length / (first + second).replace(/\s/g, "").length;
  let cut = cue.start + Math.max(1, Math.round((cue.end - cue.start) * share));
  cut = Math.min(cut, cue.end - 1);
  record();
  const secondStart = Math.min(cut + gap, cue.end - 1);
  ed.cues.splice(k, 1, { start: cue.start, end: cut, text: wrap(first, ed.rules) },
    { start: Math.max(cut, secondStart), end: cue.end, text: wrap(second, ed.rules) });
  ed.caret.delete(k);
  changed(true);
}

function merge(k) {
  if (k + 1 >= ed.cues.length) return;
  record();
  const a = ed.cues[k], b = ed.cues[k + 1];
  ed.cues.splice(k, 2, { start: a.start, end: Math.max(a.end, b.end), text: wrap(`${a.text} ${b.text}`, ed.rules) });
  changed(true);
}

function remove(k) {
  record();
  ed.cues.splice(k, 1);
  changed(true);
}

function renderCues() {
  const items = ed.cues.map((cue, k) => {
    const li = document.createElement("li");
    li.className = "cue";
    li.dataset.index = k;
    const num = span(String(k + 1).padStart(2, "0"), "num");
    num.title = "Play from here";
    const times = document.createElement("div");
    times.className = "times";
    const tools = document.createElement("span");
    tools.className = "cue-tools";
    tools.append(
      button("In ⇤", "", () => setAtPlayhead(k, "start"), "Set the in point at the playhead"),
      button("⇥ Out", "", () => setAtPlayhead(k, "end"), "Set the out point at the playhead"),
      button("Split", "split", () => split(k), "Split at the cursor (or the middle)"),
      button("Merge ↓", "merge", () => merge(k), "Merge with the next cue"),
      button("✕", "delete", () => remove(k), "Delete this cue"),
    );
    if (k + 1 >= ed.cues.length) tools.querySelector(".merge").disabled = true;
    times.append(timecodeInput(k, "start"), span("→", "arrow"), timecodeInput(k, "end"), span("", "dur"));
    const text = document.createElement("textarea");
    text.value = cue.text;
    text.rows = Math.max(2, cue.text.split("\n").length);
    text.spellcheck = true;
    text.setAttribute("aria-label", `Cue ${k + 1} text`);
    text.addEventListener("focus", () => { ed.typing = false; });
    text.addEventListener("input", () => {
      if (!ed.typing) { record(); ed.typing = true; } // one undo step per burst of typing
      clearTimeout(text.burst);
      text.burst = setTimeout(() => { ed.typing = false; }, 1200);
      ed.cues[k].text = text.value;
      ed.caret.set(k, text.selectionStart);
      changed(false);
    });
    const caret = () => ed.caret.set(k, text.selectionStart);
    text.addEventListener("keyup", caret);
    text.addEventListener("click", caret);
    const checks = document.createElement("div");
    checks.className = "breaches";
    const foot = document.createElement("div");
    foot.className = "cue-foot";
    foot.append(checks, tools);
    li.append(num, times, text, foot);
    li.addEventListener("click", (e) => {
      if (e.target.closest("button, input, textarea")) return;
      seek(toSeconds(cue.start, ed.fd));
    });
    return li;
  });
  $("cues").replaceChildren(...items);
  $("cue-count").textContent = ed.cues.length;
  ed.current = -1;
  refreshChecks();
  follow(true);
}

// the per-cue checks, durations and the timeline, without touching what is being typed
function refreshChecks() {
  const rows = $("cues").children;
  const strip = [], counts = {};
  ed.cues.forEach((cue, k) => {
    const found = breaches(ed.cues, k, ed.rules);
    const row = rows[k];
    const bad = found.some((b) => b.bad);
    row.classList.toggle("bad", bad);
    row.classList.toggle("warn", !bad && found.length > 0);
    const lengthS = toSeconds(cue.end - cue.start, ed.fd);
    const chars = linesOf(cue.text).reduce((n, l) => n + [...l].length, 0);
    row.querySelector(".dur").textContent = `${lengthS.toFixed(2)} s · ${lengthS > 0 ? (chars / lengthS).toFixed(1) : "∞"} cps`;
    row.querySelector(".breaches").replaceChildren(...found.map((b) => span(b.text, b.bad ? "breach bad" : "breach")));
    for (const b of found) counts[b.rule] = (counts[b.rule] || 0) + 1;
    const block = document.createElement("i");
    const total = Math.max(ed.duration, 1e-3);
    block.style.left = `${(toSeconds(cue.start, ed.fd) / total) * 100}%`;
    block.style.width = `${Math.max(0.2, (lengthS / total) * 100)}%`;
    block.className = bad ? "bad" : found.length ? "warn" : "";
    block.title = `${k + 1}: ${cue.text.replace(/\n/g, " ")}`;
    strip.push(block);
  });
  $("strip").replaceChildren(...strip);
  const names = { max_cps: "too fast", max_line_width: "lines too long", max_lines: "too many lines",
    min_duration: "too short", max_duration: "too long", min_gap: "gaps too small", order: "overlaps", text: "empty" };
  const summary = Object.entries(counts).map(([rule, n]) => span(`${n} ${names[rule] || rule}`,
    rule === "order" || rule === "text" ? "breach bad" : "breach"));
  $("rule-summary").replaceChildren(...(summary.length ? summary : [span("All cues within the rules", "muted")]));
  ed.current = -1;
  follow(false);
}

function seek(seconds) {
  const player = $("player");
  if (player.src) player.currentTime = seconds;
  showTime(seconds);
}

function showTime(seconds) {
  $("clock").textContent = clock(seconds);
  $("playhead").style.left = `${(seconds / Math.max(ed.duration, 1e-3)) * 100}%`;
}

// the cue under the playhead: highlighted, shown over the picture, scrolled into view
function follow(force) {
  if (!ed.job) return;
  const t = $("player").currentTime || 0;
  const frame = toFrames(t, ed.fd);
  let lo = 0, hi = ed.cues.length - 1, at = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (ed.cues[mid].start <= frame) { at = mid; lo = mid + 1; } else hi = mid - 1;
  }
  if (at >= 0 && frame >= ed.cues[at].end) at = -1;
  showTime(t);
  if (at === ed.current && !force) return;
  const rows = $("cues").children, blocks = $("strip").children;
  if (ed.current >= 0 && rows[ed.current]) { rows[ed.current].classList.remove("now"); blocks[ed.current]?.classList.remove("now"); }
  ed.current = at;
  const caption = $("caption");
  caption.replaceChildren();
  if (at < 0) return;
  rows[at].classList.add("now");
  blocks[at]?.classList.add("now");
  caption.append(span(linesOf(ed.cues[at].text).join("\n")));
  const editing = document.activeElement && $("cues").contains(document.activeElement);
  if ($("follow").checked && !editing && !$("player").paused) rows[at].scrollIntoView({ block: "nearest", behavior: "smooth" });
}

function tick() {
  follow(false);
  if (!$("player").paused) requestAnimationFrame(tick);
}

async function exportFiles() {
  const formats = [...document.querySelectorAll("#export-formats input:checked")].map((i) => i.value);
  if (!formats.length) { toast("Choose at least one format", true); return; }
  await save();
  if (ed.dirty) { toast("Fix the marked cues first: the export uses the saved cues", true); return; }
  const query = `fps=${encodeURIComponent($("export-fps").value)}&fcpxml_version=${encodeURIComponent($("export-version").value)}`;
  for (const fmt of formats) {
    try {
      const response = await api(`/v1/jobs/${ed.job}/export?format=${fmt}&${query}`);
      const name = /filename\*=UTF-8''([^;]+)/.exec(response.headers.get("content-disposition") || "");
      const link = document.createElement("a");
      link.href = URL.createObjectURL(await response.blob());
      link.download = name ? decodeURIComponent(name[1]) : `subtitles.${fmt}`;
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    } catch (e) {
      toast(`${fmt.toUpperCase()}: ${e.message}`, true);
      return;
    }
  }
  toast(`Exported ${formats.map((f) => f.toUpperCase()).join(", ")}`);
}

async function revert() {
  if (!confirm("Discard every edit of this job and return to the transcribed cues?")) return;
  try {
    const state = await (await api(`/v1/jobs/${ed.job}/cues`, { method: "DELETE" })).json();
    record();
    load(state);
    updateHistoryButtons();
    setSave("Transcribed cues", "");
  } catch (e) { toast(e.message, true); }
}

function setupEditor() {
  const player = $("player");
  player.addEventListener("play", () => { $("play").textContent = "❚❚"; requestAnimationFrame(tick); });
  player.addEventListener("pause", () => { $("play").textContent = "▶"; follow(false); });
  player.addEventListener("seeked", () => follow(false));
  player.addEventListener("error", () => { // e.g. ProRes: browsers do not decode it; the cues stay editable
    if (!player.getAttribute("src")) return;
    $("no-media").textContent = "This browser cannot play this file (its codec, e.g. ProRes). The cues can still be edited.";
    $("no-media").hidden = false;
    $("audio-only").hidden = true;
  });
  player.addEventListener("timeupdate", () => follow(false));
  $("play").addEventListener("click", () => (player.paused ? player.play() : player.pause()));
  const step = (n) => { player.pause(); seek(toSeconds(toFrames(player.currentTime, ed.fd) + n, ed.fd)); };
  $("frame-back").addEventListener("click", () => step(-1));
  $("frame-fwd").addEventListener("click", () => step(1));
  $("timeline").addEventListener("click", (e) => {
    const box = e.currentTarget.getBoundingClientRect();
    seek(((e.clientX - box.left) / box.width) * ed.duration);
  });
  $("back").addEventListener("click", async () => { await save(); location.hash = "#/"; });
  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  $("revert").addEventListener("click", revert);
  $("export").addEventListener("click", exportFiles);
  $("export-formats").addEventListener("change", () => {
    const p = prefs();
    p.formats = [...document.querySelectorAll("#export-formats input:checked")].map((i) => i.value);
    localStorage.setItem(PREFS_STORE, JSON.stringify(p));
  });
  document.addEventListener("keydown", (e) => {
    if (!ed.job) return;
    const inField = e.target.closest("input, textarea, select");
    const mod = e.metaKey || e.ctrlKey;
    if (mod && e.key.toLowerCase() === "z" && !inField) { e.preventDefault(); e.shiftKey ? redo() : undo(); }
    else if (mod && e.key.toLowerCase() === "y" && !inField) { e.preventDefault(); redo(); }
    else if (mod && e.key.toLowerCase() === "s") { e.preventDefault(); save(); }
    else if (!inField && e.key === " ") { e.preventDefault(); $("play").click(); }
    else if (!inField && e.key === "ArrowLeft") { e.preventDefault(); step(-1); }
    else if (!inField && e.key === "ArrowRight") { e.preventDefault(); step(1); }
  });
  window.addEventListener("beforeunload", (e) => { if (ed.dirty) e.preventDefault(); });
}

// --- start ------------------------------------------------------------------------------------

function route() {
  const match = /^#\/job\/([\w-]+)$/.exec(location.hash);
  if (match) openEditor(match[1]);
  else if (ed.job) closeEditor();
}

async function start() {
  $("key-form").addEventListener("submit", () => {});
  $("key-button").addEventListener("click", () => askKey("").then(() => location.reload()));
  try {
    config = await (await api("/v1/studio")).json();
  } catch (e) {
    setConnection("down");
    toast(e.message, true);
    return;
  }
  setupQueue();
  setupEditor();
  try {
    const list = await (await api("/v1/jobs")).json();
    for (const job of list.data) jobs.set(job.id, job);
  } catch (e) { toast(e.message, true); }
  renderJobs();
  listen();
  window.addEventListener("hashchange", route);
  route();
}

start();
