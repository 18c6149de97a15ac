// TransMed view: NiiVue (vendored, static/niivue/) with the case's labels as its drawing layer.
// Every volume arrives on the prediction's grid in RAS voxel order (see viewer/volumes.py), so
// NiiVue's drawing bitmap is the label map itself (internal labels 0-3, x fastest).
// Opening a case costs one NiiVue volume load: the labels arrive as the raw bitmap, the draw
// colours change without re-uploading the volume, and the other modalities download after the
// first render (timings: benchmarks/viewer_open_time.py).
"use strict";
const $ = (id) => document.getElementById(id);
const REGIONS = {
  regions: [["WT", [2, 1, 3], [0, 200, 0]], ["TC", [1, 3], [220, 0, 0]], ["ET", [3], [255, 220, 0]]],
  labels: [["NCR", [1], [220, 0, 0]], ["ED", [2], [0, 200, 0]], ["ET", [3], [255, 220, 0]]],
};
const state = {
  caseId: null, info: null, modality: null, shown: { WT: true, TC: true, ET: true, NCR: true, ED: true },
  tool: "navigate", openedAt: 0, firstEditAt: null, redo: [], ready: false, error: null,
  prefetched: {}, // modality -> Promise<Blob> of the open case, fetched after the first render
};
const nv = new niivue.Niivue({
  backColor: [0, 0, 0, 1], show3Dcrosshair: true, isOrientCube: false, logLevel: "error",
  dragAndDropEnabled: false, crosshairWidth: 1, crosshairColor: [0.2, 0.6, 1, 0.6],
});
window.tm = { nv, state };
// ms since navigation: this script running, NiiVue's shaders ready (benchmarks read them)
state.bootMarks = { script: performance.now() };

// NiiVue computes a gradient texture (a blur and a Sobel pass over the whole volume) each time
// a background volume loads. Only its gradient-lit renderers read it; this page uses the plain
// volume renderer (gradientAmount 0), whose 3D view is the same without it. On a software
// WebGL (headless chromium, a machine without a GPU) the two passes took ~85 % of the open
// time, so they get a shader that draws nothing. Skipped when NiiVue's names change.
const GRADIENT_SHADERS = ["blurShader", "sobelFirstOrderShader", "gradientPrePassShader",
  "sobelSecondOrderShader"];
function skipGradientPasses() {
  const gl = nv.gl;
  if (!gl || !GRADIENT_SHADERS.every((k) => k in nv) || nv.opts.gradientAmount) return false;
  const shader = (type, src) => {
    const sh = gl.createShader(type);
    gl.shaderSource(sh, src); gl.compileShader(sh);
    return sh;
  };
  const program = gl.createProgram();
  // Every vertex outside the clip volume: the draw calls rasterise no fragment at all.
  gl.attachShader(program, shader(gl.VERTEX_SHADER,
    "#version 300 es\nvoid main() { gl_Position = vec4(2.0, 2.0, 2.0, 1.0); }"));
  gl.attachShader(program, shader(gl.FRAGMENT_SHADER,
    "#version 300 es\nprecision lowp float;\nout vec4 c;\nvoid main() { c = vec4(0.0); }"));
  gl.linkProgram(program);
  if (!gl.getProgramParameter(program, gl.LINK_STATUS)) return false;
  const none = { program, uniforms: {}, use(g) { g.useProgram(program); } };
  for (const k of GRADIENT_SHADERS) nv[k] = none;
  return true;
}

async function api(path, opts) {
  const r = await fetch(path, Object.assign({ credentials: "same-origin" }, opts || {}));
  const ct = r.headers.get("content-type") || "";
  const body = ct.includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new Error(body.error || body || r.statusText);
  return body;
}

function showError(msg) {
  state.error = msg;
  $("error").textContent = msg || "";
  $("error").hidden = !msg;
}

function status(msg) { $("status").textContent = msg; }

// Drawing colours: innermost visible region wins (ET inside TC inside WT).
function applyColormap() {
  const mode = $("overlayMode").value;
  const R = [0, 0, 0, 0], G = [0, 0, 0, 0], B = [0, 0, 0, 0], A = [0, 0, 0, 0];
  for (const [name, labels, rgb] of REGIONS[mode]) {
    if (!state.shown[name]) continue;
    for (const l of labels) { R[l] = rgb[0]; G[l] = rgb[1]; B[l] = rgb[2]; A[l] = 255; }
  }
  const cmap = { R, G, B, A, I: [0, 1, 2, 3], labels: ["", "NCR", "ED", "ET"] };
  // nv.setDrawColormap re-uploads and re-orients the whole background volume (seconds on a
  // software WebGL); the draw colours only live in the colour-map texture, so refresh that.
  if (niivue.cmapper && nv.volumes.length) {
    nv.drawLut = niivue.cmapper.makeDrawLut(cmap);
    nv.refreshColormaps();
  } else {
    nv.setDrawColormap(cmap); // cheap while no volume is loaded
  }
  nv.setDrawOpacity(parseFloat($("opacity").value));
  nv.drawScene();
}

function renderToggles() {
  const mode = $("overlayMode").value;
  $("toggles").innerHTML = "";
  for (const [name, , rgb] of REGIONS[mode]) {
    const label = document.createElement("label");
    label.innerHTML = `<input type="checkbox" data-region="${name}" ${state.shown[name] ? "checked" : ""}>` +
      `<span style="color:rgb(${rgb})">${name}</span>`;
    label.querySelector("input").onchange = (e) => { state.shown[name] = e.target.checked; applyColormap(); };
    $("toggles").appendChild(label);
  }
}

// Region and label volumes (ml) from the drawing bitmap, updated on every edit.
function updateVolumes() {
  const bm = nv.drawBitmap;
  if (!bm || !state.info) return;
  const n = [0, 0, 0, 0];
  for (let i = 0; i < bm.length; i++) n[bm[i] & 3]++;
  const ml = (c) => (c * state.info.voxel_ml).toFixed(2);
  const rows = [["WT", n[1] + n[2] + n[3]], ["TC", n[1] + n[3]], ["ET", n[3]],
    ["NCR (1)", n[1]], ["ED (2)", n[2]], ["ET (3)", n[3]]];
  $("volumes").innerHTML = rows.map(([k, c]) => `<tr><td>${k}</td><td>${ml(c)} ml</td></tr>`).join("");
  state.volumes = Object.fromEntries(rows.map(([k, c]) => [k, c * state.info.voxel_ml]));
}

function setTool(tool) {
  state.tool = tool;
  for (const b of document.querySelectorAll("#tools button")) b.classList.toggle("on", b.dataset.tool === tool);
  const label = parseInt($("penLabel").value, 10);
  nv.opts.penSize = Math.max(1, parseInt($("penSize").value, 10) || 1);
  if (tool === "navigate") { nv.setDrawingEnabled(false); return; }
  nv.setDrawingEnabled(true);
  if (tool === "brush") nv.setPenValue(label, false);
  else if (tool === "fill") nv.setPenValue(label, true); // outline a region on the slice: filled
  else if (tool === "eraser") nv.setPenValue(0, false);
}

function setView(v) {
  for (const b of document.querySelectorAll("#views button")) b.classList.toggle("on", +b.dataset.view === v);
  nv.setSliceType(v);
}

nv.onDrawingChanged = (action) => {
  if (action !== "load" && action !== "undo" && state.ready) {
    if (state.firstEditAt === null) state.firstEditAt = performance.now();
    if (action !== "redo") state.redo = [];
  }
  updateVolumes();
};

const imageUrl = (id, mod) => `api/cases/${encodeURIComponent(id)}/image/${mod}.nii`;

async function loadBackground(mod) {
  // Swapping the background volume resets NiiVue's drawing: keep the bitmap and its undo list.
  const keep = nv.drawBitmap ? nv.drawBitmap.slice() : null;
  const undo = nv.drawUndoBitmaps, undoAt = nv.currentDrawUndoBitmap;
  const id = state.caseId;
  let blob = null;
  try { blob = state.prefetched[mod] ? await state.prefetched[mod] : null; } catch (e) { blob = null; }
  const url = blob ? URL.createObjectURL(blob) : imageUrl(id, mod);
  try {
    await nv.loadVolumes([{ url, name: `${mod}.nii` }]);
  } finally { if (blob) URL.revokeObjectURL(url); }
  state.modality = mod;
  if (keep) {
    nv.createEmptyDrawing();
    nv.drawBitmap.set(keep);
    nv.drawUndoBitmaps = undo; nv.currentDrawUndoBitmap = undoAt;
    nv.refreshDrawing(true);
  }
}

// The labels as the drawing: the server sends NiiVue's bitmap itself (RAS order, x fastest).
function setDrawing(bytes) {
  nv.createEmptyDrawing();
  if (nv.drawBitmap.length !== bytes.length) {
    throw new Error(`labels: ${bytes.length} voxels for a ${nv.drawBitmap.length}-voxel image`);
  }
  nv.drawBitmap.set(bytes);
  nv.drawClearAllUndoBitmaps();
  nv.drawAddUndoBitmap(); // the prediction is the first undo state
  nv.refreshDrawing(false);
}

// After the first render: the other modalities, one at a time, so a switch is a local load.
async function prefetchOthers(id, mods) {
  for (const mod of mods) {
    if (state.caseId !== id) return;
    const p = fetch(imageUrl(id, mod)).then((r) => (r.ok ? r.blob() : null));
    state.prefetched[mod] = p;
    try { await p; } catch (e) { delete state.prefetched[mod]; }
  }
}

const firstModality = (info) => (info.modalities.includes("t1ce") ? "t1ce" : info.modalities[0]);

// A case's downloads, started at once: its info, labels and first image (the first case's
// start while NiiVue is still compiling its shaders). Rejections are handled where awaited.
function fetchCase(id) {
  const info = api(`api/cases/${encodeURIComponent(id)}`);
  const labels = fetch(`api/cases/${encodeURIComponent(id)}/labels.raw`).then(async (r) => {
    if (!r.ok) throw new Error((await r.json()).error || r.statusText);
    return new Uint8Array(await r.arrayBuffer());
  });
  const image = info.then((i) => fetch(imageUrl(id, firstModality(i))))
    .then((r) => (r.ok ? r.blob() : null));
  for (const p of [info, labels, image]) p.catch(() => {});
  return { info, labels, image };
}

async function openCase(id, pending) {
  const t0 = performance.now();
  state.ready = false;
  showError(null);
  for (const li of document.querySelectorAll("#cases li")) li.classList.toggle("on", li.dataset.id === id);
  state.caseId = id;
  state.prefetched = {};
  const got = pending || fetchCase(id);
  let info;
  try {
    info = await got.info;
  } catch (e) {
    showError(e.message); state.info = null; nv.volumes.length && nv.loadVolumes([]);
    return;
  }
  state.info = info;
  const marks = { info: performance.now() - t0 };
  $("modality").innerHTML = info.modalities.map((m) => `<option value="${m}">${m}</option>`).join("");
  const mod = firstModality(info);
  $("modality").value = mod;
  state.prefetched[mod] = got.image;
  const labels = got.labels;
  nv.drawBitmap = null;
  try {
    await loadBackground(mod);
    marks.image = performance.now() - t0;
    setDrawing(await labels);
  } catch (e) {
    showError(e.message); return;
  }
  marks.labels = performance.now() - t0;
  applyColormap();
  setTool(state.tool);
  updateVolumes();
  const prov = Object.assign({ prediction: info.prediction, label_values: info.label_convention,
    grid: `${info.shape.join("x")} @ ${info.spacing_mm.join("x")} mm`, saves_to: info.saved_to }, info.provenance);
  $("provenance").textContent = JSON.stringify(prov, null, 1);
  $("model").textContent = modelLine(info.provenance || {});
  $("send").hidden = !info.can_send;
  state.openedAt = performance.now(); state.firstEditAt = null; state.redo = [];
  state.ready = true;
  state.openMs = performance.now() - t0;
  state.sinceNavigationMs = performance.now(); // the page's clock starts at navigation
  state.openMarks = marks; // ms since the click: case info, image shown, labels drawn
  status(`${id} opened in ${(state.openMs / 1000).toFixed(2)} s`);
  prefetchOthers(id, info.modalities.filter((m) => m !== mod));
}

// "Model: transmed_full (sha256 d1114c66585c) · TransMed 0.1.0", from the provenance JSON
// beside the prediction, the predict summary or the SEG's job record.
function modelLine(p) {
  const m = p.model;
  const list = Array.isArray(m) ? m : m ? [m] : [];
  const names = list.map((x) => typeof x === "string" ? x
    : `${x.name || x.model || "?"}${x.sha256 ? ` (sha256 ${x.sha256.slice(0, 12)})` : ""}`);
  const version = p.software && p.software.version ? ` · TransMed ${p.software.version}` : "";
  return names.length ? `Model: ${names.join(", ")}${version}` : "Model: not recorded";
}

function undo() {
  if (!nv.drawBitmap) return;
  state.redo.push(nv.drawBitmap.slice());
  nv.drawUndo();
  updateVolumes();
}

function redo() {
  const next = state.redo.pop();
  if (!next) return;
  nv.drawBitmap.set(next);
  nv.drawAddUndoBitmap();
  nv.refreshDrawing(true);
  updateVolumes();
}

async function save() {
  if (!state.ready) return;
  const now = performance.now();
  const q = new URLSearchParams({
    seconds_open: ((now - state.openedAt) / 1000).toFixed(1),
    seconds_editing: state.firstEditAt === null ? "0" : ((now - state.firstEditAt) / 1000).toFixed(1),
  });
  status("saving...");
  try {
    const r = await api(`api/cases/${encodeURIComponent(state.caseId)}/save?${q}`, {
      method: "POST", headers: { "Content-Type": "application/octet-stream" }, body: nv.drawBitmap,
    });
    state.lastSave = r;
    status(`saved ${r.corrected}${r.seg ? " + " + r.seg : ""}: ${r.voxels_changed} voxels changed`);
  } catch (e) { showError(`save failed: ${e.message}`); status(""); }
}

async function send() {
  try {
    const r = await api(`api/cases/${encodeURIComponent(state.caseId)}/send`, { method: "POST" });
    status(r.sending ? "queued and sending to the PACS" : "queued in the node's outbox (sent at its next start)");
  } catch (e) { showError(`send failed: ${e.message}`); }
}

async function main() {
  const listed = api("api/cases"); // while NiiVue compiles its shaders
  const early = listed.then((list) => {
    const id = new URLSearchParams(location.search).get("case") || (list.cases.find((c) => !c.problem) || {}).id;
    return id ? { id, pending: fetchCase(id) } : null;
  });
  early.catch(() => {});
  await nv.attachTo("gl"); // its shaders exist once this resolves
  state.bootMarks.attached = performance.now();
  state.gradientSkipped = skipGradientPasses();
  for (const b of document.querySelectorAll("#views button")) b.onclick = () => setView(+b.dataset.view);
  for (const b of document.querySelectorAll("#tools button")) b.onclick = () => setTool(b.dataset.tool);
  $("penLabel").onchange = () => setTool(state.tool);
  $("penSize").onchange = () => setTool(state.tool);
  $("overlayMode").onchange = () => { renderToggles(); applyColormap(); };
  $("opacity").oninput = applyColormap;
  $("modality").onchange = (e) => loadBackground(e.target.value);
  $("undo").onclick = undo; $("redo").onclick = redo; $("save").onclick = save; $("send").onclick = send;
  renderToggles();
  setView(0);
  const list = await listed;
  $("root").textContent = `${list.root} (${list.kind})`;
  for (const c of list.cases) {
    const li = document.createElement("li");
    li.dataset.id = c.id;
    li.textContent = c.id;
    if (c.problem) { li.classList.add("bad"); li.title = c.problem; }
    li.onclick = () => openCase(c.id);
    $("cases").appendChild(li);
  }
  const first = await early;
  if (first) await openCase(first.id, first.pending);
  if (window.history.replaceState) window.history.replaceState(null, "", location.pathname); // token out of the address bar
}
main().catch((e) => showError(e.message));
