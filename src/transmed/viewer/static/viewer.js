// TransMed view: NiiVue (vendored, static/niivue/) with the case's labels as its drawing layer.
// Every volume arrives on the prediction's grid in RAS voxel order (see viewer/volumes.py), so
// NiiVue's drawing bitmap is the label map itself (internal labels 0-3, x fastest).
// Opening a case costs one NiiVue volume load: the labels arrive as the raw bitmap, the draw
// colours change without re-uploading the volume, the scene is drawn once, and the other
// modalities download after the first render (timings: benchmarks/viewer_open_time.py).
"use strict";
async function api(path, opts) {
  const r = await fetch(path, Object.assign({ credentials: "same-origin" }, opts || {}));
  const ct = r.headers.get("content-type") || "";
  const body = ct.includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new Error(body.error || body || r.statusText);
  return body;
}

const imageUrl = (id, mod) => `api/cases/${encodeURIComponent(id)}/image/${mod}.nii`;

const firstModality = (info) => (info.modalities.includes("t1ce") ? "t1ce" : info.modalities[0]);

const imageBlob = (id, mod) => fetch(imageUrl(id, mod)).then((r) => (r.ok ? r.blob() : null));

// A case's downloads, started at once: its info, labels and first image. The image is asked
// for as T1ce (the modality shown first whenever a case has one) without waiting for the
// info: the info's answer would reach this page's thread only once NiiVue's start-up lets go
// of it. Rejections are handled where awaited.
function fetchCase(id) {
  const info = api(`api/cases/${encodeURIComponent(id)}`);
  const labels = fetch(`api/cases/${encodeURIComponent(id)}/labels.raw`).then(async (r) => {
    if (!r.ok) throw new Error((await r.json()).error || r.statusText);
    return new Uint8Array(await r.arrayBuffer());
  });
  const t1ce = imageBlob(id, "t1ce");
  t1ce.catch(() => {});
  const image = info.then((i) => (firstModality(i) === "t1ce" ? t1ce : imageBlob(id, firstModality(i))));
  for (const p of [info, labels, image]) p.catch(() => {});
  return { info, labels, image };
}

// The case the page opens: ?case=, else the one the server names in the page (the first
// viewable case, which it prepares at start), else the case list's first viewable case. Its
// downloads start here, before NiiVue attaches: attaching holds the page's thread while NiiVue
// compiles its shaders, and the info, labels and first image arrive meanwhile instead of
// after. (Started before NiiVue's 2 MB bundle had arrived, in an earlier script, they slowed
// that bundle's delivery under load: measured, no faster overall.)
const boot = (() => {
  const listed = api("api/cases");
  const named = new URLSearchParams(location.search).get("case")
    || (document.querySelector('meta[name="transmed-case"]') || {}).content || "";
  const early = named ? Promise.resolve({ id: named, pending: fetchCase(named) })
    : listed.then((list) => {
      const id = (list.cases.find((c) => !c.problem) || {}).id;
      return id ? { id, pending: fetchCase(id) } : null;
    });
  for (const p of [listed, early]) p.catch(() => {});
  return { listed, early };
})();

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
  const none = { program, uniforms: {}, use(g) { g.useProgram(program); elideGradientCalls(g); } };
  for (const k of GRADIENT_SHADERS) nv[k] = none;
  return true;
}

// The stubbed gradient pass still costs: for each slice of the volume, twice, NiiVue attaches a
// layer of a volume-sized RGBA texture, asks the GPU process whether the framebuffer is complete
// (a synchronous round trip) and draws (nothing): 310 round trips and 310 render passes into two
// 36 MB textures for a 240 x 240 x 155 volume, ~0.15 s of the page's thread and more of
// SwiftShader's per background load (measured, benchmarks/results/viewer_open_time_s6.md).
// From the stub's use() to the pass deleting its framebuffer (or the end of the running task,
// whichever comes first) those three calls are skipped, and the pass's two textures are made
// 2 x 2 x 2 (GRADIENT_UNITS, in skipZeroUploads): zeros either way, read only by the
// gradient-lit renderers, which are stubbed too (UNUSED_SHADERS).
const GRADIENT_UNITS = { scratch: 33992, gradient: 33990 }; // NiiVue's TEXTURE8_PAQD, TEXTURE6_GRADIENT
function elideGradientCalls(gl) {
  if (Object.prototype.hasOwnProperty.call(gl, "drawArrays")) return; // already eliding
  const proto = WebGL2RenderingContext.prototype;
  const names = ["framebufferTextureLayer", "checkFramebufferStatus", "drawArrays", "deleteFramebuffer"];
  const stop = () => { for (const k of names) delete gl[k]; };
  gl.framebufferTextureLayer = () => {};
  gl.checkFramebufferStatus = () => gl.FRAMEBUFFER_COMPLETE;
  gl.drawArrays = () => {};
  gl.deleteFramebuffer = (fb) => { stop(); proto.deleteFramebuffer.call(gl, fb); };
  queueMicrotask(stop);
  state.gradientCallsElided = (state.gradientCallsElided || 0) + 1;
}

// NiiVue compiles ~50 shader programs when it attaches, and on a software WebGL (ANGLE over
// SwiftShader) each link also compiles the program's pipeline in the background: 3-4 s of CPU
// on 2 cores, run while the case downloads and uploads (measured with a Chrome trace; the 3D
// renderers are the four largest). The programs this page never draws with get a fragment
// shader that compiles in no time:
// - the gradient-lit and slice-mode 3D renderers (only NiiVue's illumination calls select them;
//   this page shows the plain volume renderer, nv.renderShader, which is kept);
// - the v1 slice shader (opts.isV1SliceShader, unset; the slices use nv.sliceMMShader);
// - the gradient passes (replaced by skipGradientPasses anyway) and grow-cut (not a tool here);
// - the orient shaders of float, atlas, RGBA and PAQD volumes (the server sends only uint8 or
//   int16 images, see viewer/volumes.py display_nifti) and the mesh and fibre shaders (no
//   meshes here).
// Matched by the exact source (FNV-1a hash and length) of the vendored NiiVue 0.69.0; another
// version's sources match nothing and are all compiled, as before.
const UNUSED_SHADERS = {
  "c3a2bc85:17062": "renderSliceShader", "aa40fa89:19867": "renderGradientShader",
  "317c408e:18761": "renderGradientValuesShader", "2a1b1937:8792": "sliceV1Shader",
  "452a3924:1491": "blurShader", "4ad29603:2790": "gradientPrePassShader",
  "e0e6f3cb:1589": "sobelFirstOrderShader", "e0371f5f:1989": "sobelSecondOrderShader",
  "15fa3007:1930": "growCutShader",
  "6df64e66:2992": "orientShaderAtlasU", "2ee517a:2992": "orientShaderAtlasI",
  "3be609db:3486": "orientShaderF", "197036f:1466": "orientShaderRGBU",
  "16e46b85:1706": "orientShaderPAQD",
  "a57626e3:162": "fiberShader", // not surfaceShader: it draws the 3D crosshair
  "7ce7dc0:1177": "mesh:Crevice", "38f4527d:1793": "mesh:Crosscut", "fe4f098e:308": "mesh:Diffuse",
  "e9435dc7:625": "mesh:Edge", "ebaa2bf7:688": "mesh:Flat", "9081839b:2246": "mesh:Harmonic",
  "e842110:943": "mesh:Hemispheric", "99198807:319": "mesh:Matcap", "341f83dc:440": "mesh:Matte",
  "38cb4478:800": "mesh:Outline", "536ad4d0:683": "mesh:Phong", "de2db72e:687": "mesh:Rim",
  "4c4d2ec:452": "mesh:Silhouette", "e4af4be6:664": "mesh:Specular", "2f145099:1252": "mesh:Toon",
};
const STUB_FRAGMENT = "#version 300 es\nprecision lowp float;\nout vec4 c;\nvoid main() { c = vec4(0.0); }";

// NiiVue's orient pass turns the background volume into its RGBA texture: one full-screen draw
// per slice with a fragment shader written for every layer and option (overlays blended over
// the layer below, negative colour maps, alpha thresholds, modulation), each behind a uniform
// branch. A GPU skips those branches; SwiftShader evaluates them all, and the pass was the
// largest single cost of opening a case on a software WebGL (~0.6 of ~1 s of queued GPU work
// for 240 x 240 x 155, measured: benchmarks/results/viewer_open_time_s6.md). On a software
// WebGL only, the int16 and uint8 orient shaders (matched by NiiVue 0.69.0's exact sources)
// are compiled with the main() below: NiiVue's own statements for a background layer drawn
// plainly (layer 0, colour map from its minimum, no negative map, no modulation), the options'
// branches left out. A volume outside that case gets NiiVue's shader, compiled when first
// needed (orientFor); tests/viewer/test_browser.py compares the two textures byte for byte.
const ORIENT_SHADERS = { "ac83c81a:3487": "orientShaderI", "91279c26:3487": "orientShaderU" };
const PLAIN_ORIENT_MAIN = `void main(void) {
	vec4 vx = vec4(TexCoord.xy, coordZ, 1.0) * mtx;
	if ((vx.x < 0.0) || (vx.x > 1.0) || (vx.y < 0.0) || (vx.y > 1.0) || (vx.z < 0.0) || (vx.z > 1.0)) {
		FragColor = texture(blend3D, vec3(TexCoord.xy, coordZ));
		return;
	}
	float f = (scl_slope * float(texture(intensityVol, vx.xyz).r)) + scl_inter;
	float mn = cal_min;
	float mx = cal_max;
	float r = max(0.00001, abs(mx - mn));
	mn = min(mn, mx);
	float txl = mix(0.0, 1.0, (f - mn) / r);
	if (f > mn) {
		txl = max(txl, 2.0/256.0);
	}
	float nlayer = float(textureSize(colormap, 0).y);
	float y = ((2.0 * layer) + 1.5)/nlayer;
	FragColor = texture(colormap, vec2(txl, y)).rgba;
	FragColor.a *= opacity;
}
`;
const orientGeneral = {}; // name -> { vs, fs, shader }: NiiVue's own orient shader, built on demand

function softwareGL(gl) {
  const ext = gl.getExtension("WEBGL_debug_renderer_info");
  const renderer = String(gl.getParameter(ext ? ext.UNMASKED_RENDERER_WEBGL : gl.RENDERER) || "");
  return /SwiftShader|llvmpipe|softpipe|software|Basic Render/i.test(renderer);
}

// The orient pass of a volume shown plainly as the background (the only kind this page loads).
function plainBackground(vol, layer) {
  return layer === 0 && vol.colormapType === 0 && !(vol.colormapNegative && vol.colormapNegative.length)
    && vol.modulationImage == null && !("alphaThreshold" in vol);
}

// NiiVue's own orient shader `name` (compiled the first time a volume needs it), as NiiVue
// builds its shader objects: the program and the location of each uniform its sources declare.
function orientFor(name) {
  const g = orientGeneral[name];
  if (!g.shader) {
    const gl = nv.gl, program = gl.createProgram();
    for (const [type, src] of [[gl.VERTEX_SHADER, g.vs], [gl.FRAGMENT_SHADER, g.fs]]) {
      const sh = gl.createShader(type);
      gl.shaderSource(sh, src); gl.compileShader(sh); gl.attachShader(program, sh);
    }
    gl.linkProgram(program);
    if (!gl.getProgramParameter(program, gl.LINK_STATUS)) throw new Error(`internal: NiiVue's ${name} does not link`);
    const uniforms = {};
    for (const src of [g.vs, g.fs]) for (const m of src.matchAll(/uniform[^;]+[ ](\w+);/g)) uniforms[m[1]] = null;
    for (const u of Object.keys(uniforms)) uniforms[u] = gl.getUniformLocation(program, u);
    g.shader = { program, uniforms, use(c) { c.useProgram(program); } };
  }
  return g.shader;
}

// Each orient pass (NiiVue's refreshLayers) gets the plain shaders for a plain background and
// NiiVue's own otherwise (or always, with state.generalOrient set: the tests compare the two).
function chooseOrientShaders() {
  const names = Object.keys(orientGeneral);
  if (!names.length || typeof nv.refreshLayers !== "function") return [];
  const plain = Object.fromEntries(names.map((k) => [k, nv[k]]));
  const refreshLayers = nv.refreshLayers;
  nv.refreshLayers = function (vol, layer) {
    const fast = !state.generalOrient && vol && plainBackground(vol, layer);
    for (const k of names) nv[k] = fast ? plain[k] : orientFor(k);
    return refreshLayers.call(this, vol, layer);
  };
  return names.sort();
}

function sourceKey(src) {
  let h = 0x811c9dc5;
  for (let i = 0; i < src.length; i++) { h ^= src.charCodeAt(i); h = Math.imul(h, 0x01000193) >>> 0; }
  return `${h.toString(16)}:${src.length}`;
}

// NiiVue's shader programs by name (its fields, and "mesh:<name>" for its mesh shaders).
function niivuePrograms() {
  const out = {};
  for (const k of Object.keys(nv)) {
    if (nv[k] && nv[k].program instanceof WebGLProgram) out[k] = nv[k].program;
  }
  for (const m of nv.meshShaders || []) if (m.shader && m.shader.program) out[`mesh:${m.Name}`] = m.shader.program;
  return out;
}

// Stubs UNUSED_SHADERS while `attach` runs; returns the names of the NiiVue shaders stubbed.
// Throws if a stubbed program is not one of those named there (a shader the page may draw with).
async function attachWithoutUnusedShaders(attach) {
  const proto = window.WebGL2RenderingContext && WebGL2RenderingContext.prototype;
  if (!proto) { await attach(); return []; }
  const shaderSource = proto.shaderSource;
  const stubbed = new Set(); // WebGLShader objects given the stub
  const sources = new Map(), plainOrient = new Map(); // WebGLShader -> NiiVue's source, orient name
  let software = null;
  proto.shaderSource = function (shader, src) {
    const key = typeof src === "string" ? sourceKey(src) : "";
    if (UNUSED_SHADERS[key]) {
      stubbed.add(shader);
      return shaderSource.call(this, shader, STUB_FRAGMENT);
    }
    if (typeof src === "string") sources.set(shader, src);
    if (ORIENT_SHADERS[key] && software === null) software = softwareGL(this);
    if (ORIENT_SHADERS[key] && software) {
      plainOrient.set(shader, ORIENT_SHADERS[key]);
      return shaderSource.call(this, shader, src.slice(0, src.indexOf("void main(void) {")) + PLAIN_ORIENT_MAIN);
    }
    return shaderSource.call(this, shader, src);
  };
  try {
    await attach();
  } finally {
    proto.shaderSource = shaderSource;
  }
  const gl = nv.gl;
  for (const name of new Set(plainOrient.values())) { // keep NiiVue's sources for orientFor
    const attached = nv[name] && nv[name].program ? gl.getAttachedShaders(nv[name].program) || [] : [];
    const fs = attached.find((s) => plainOrient.get(s) === name);
    const vs = attached.find((s) => s !== fs);
    if (fs && vs && sources.has(vs)) orientGeneral[name] = { vs: sources.get(vs), fs: sources.get(fs), shader: null };
    else throw new Error(`internal: NiiVue's ${name} was compiled for plain backgrounds only`);
  }
  const names = Object.entries(niivuePrograms())
    .filter(([, p]) => (gl.getAttachedShaders(p) || []).some((s) => stubbed.has(s))).map(([k]) => k);
  const expected = new Set(Object.values(UNUSED_SHADERS));
  const wrong = names.filter((k) => !expected.has(k) || (nv[k] && nv[k] === nv.renderShader));
  if (wrong.length) throw new Error(`internal: shaders in use were stubbed (${wrong.join(", ")})`);
  return names.sort();
}

// WebGL gives every new texture zero contents, yet NiiVue uploads a zero array into some it
// creates: a 240 x 240 x 155 RGBA scratch texture of its gradient pass on each background load
// (36 MB through the browser's GPU transfer buffer: ~0.9 s of the open time on a software
// WebGL, measured) and the drawing's texture. Its texture helpers get the flag dropped; NiiVue
// creates a fresh texture in each, so what it reads is the same zeros.
function skipZeroUploads() {
  if (typeof nv.rgbaTex !== "function" || typeof nv.r8Tex !== "function") return false;
  const rgbaTex = nv.rgbaTex, r8Tex = nv.r8Tex;
  nv.rgbaTex = (tex, unit, dims, init) => {
    // the gradient pass's scratch (asked zero-filled on its unit) and output: see elideGradientCalls
    if (state.gradientSkipped && (unit === GRADIENT_UNITS.gradient || (unit === GRADIENT_UNITS.scratch && init))) {
      dims = [dims[0], 2, 2, 2];
    }
    return rgbaTex.call(nv, tex, unit, dims, false);
  };
  nv.r8Tex = (tex, unit, dims) => r8Tex.call(nv, tex, unit, dims, false);
  return true;
}

// NiiVue's calMinMax runs on every image load. With a display window in the header that it
// trusts (the server always writes one, see viewer/volumes.py display_nifti) it returns that
// window, but first it copies the central half-box of the volume (the middle half of each axis)
// by visiting every voxel, and takes that box's minimum and maximum as the image's global range:
// ~0.1 s of the page's thread for 240 x 240 x 155 idle, 0.4 s on a loaded machine (CPU
// profile). In that case this version visits only the box, with no copy: the same box, the
// same fields set to the same values (tests/viewer/test_browser.py compares them with NiiVue's).
// Any other case (no trusted window, a colour map with its own range, a float image, another
// frame) goes to NiiVue's own.
function fastCalMinMax() {
  const proto = niivue.NVImage && niivue.NVImage.prototype;
  if (!proto || typeof proto.calMinMax !== "function" || !niivue.cmapper) return false;
  const calMinMax = proto.calMinMax;
  state.niivueCalMinMax = calMinMax;
  proto.calMinMax = function (frame = Number.POSITIVE_INFINITY, crop = true) {
    const hdr = this.hdr, img = this.img;
    const cm = hdr && img ? niivue.cmapper.colormapFromKey(this._colormap) : null;
    const trusted = cm && crop === true && this.trustCalMinMax && (cm.min ?? 0) === (cm.max ?? 0)
      && isFinite(hdr.cal_min) && isFinite(hdr.cal_max) && hdr.cal_max > hdr.cal_min
      && (img instanceof Int16Array || img instanceof Uint8Array)
      && img.length === hdr.dims[1] * hdr.dims[2] * hdr.dims[3];
    if (!trusted) return calMinMax.call(this, frame, crop);
    state.fastCalMinMaxRuns = (state.fastCalMinMaxRuns || 0) + 1;
    const [nx, ny, nz] = [hdr.dims[1], hdr.dims[2], hdr.dims[3]];
    const lo = [Math.floor(0.25 * nx), Math.floor(0.25 * ny), Math.floor(0.25 * nz)];
    const hi = [nx - lo[0], ny - lo[1], nz - lo[2]]; // NiiVue's box: [lo, hi) on each axis
    let mn = Number.POSITIVE_INFINITY, mx = Number.NEGATIVE_INFINITY, zeros = 0;
    for (let z = lo[2]; z < hi[2]; z++) {
      for (let y = lo[1]; y < hi[1]; y++) {
        const row = nx * (y + ny * z);
        for (let i = row + lo[0]; i < row + hi[0]; i++) {
          const v = img[i];
          if (v < mn) mn = v;
          if (v > mx) mx = v;
          if (v === 0) zeros++;
        }
      }
    }
    if (this.ignoreZeroVoxels && mn === mx && zeros > 0) mn = 0;
    if (hdr.scl_slope === 0) hdr.scl_slope = 1;
    this.cal_min = hdr.cal_min; this.cal_max = hdr.cal_max;
    this.robust_min = this.cal_min; this.robust_max = this.cal_max;
    this.global_min = mn * hdr.scl_slope + hdr.scl_inter;
    this.global_max = mx * hdr.scl_slope + hdr.scl_inter;
    return [hdr.cal_min, hdr.cal_max, hdr.cal_min, hdr.cal_max];
  };
  return true;
}

// NiiVue redraws the whole scene after each step of a volume load, a drawing refresh, an
// opacity or tool change: five to six full draws while a case opened, 0.1-0.2 s each on a
// software WebGL (measured), of which only the last is seen. NiiVue's own isBusy flag turns
// each drawScene into "draw later"; one draw follows.
async function oneDraw(work) {
  nv.isBusy = true;
  try {
    return await work();
  } finally {
    nv.isBusy = false;
    nv.drawScene();
  }
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

// Region and label volumes (ml) from the drawing bitmap, updated on every edit; `counts`:
// voxels of labels 0-3 when known (the server's count of the labels the page opens with, which
// spares a scan of the whole bitmap while the case opens).
function updateVolumes(counts) {
  const bm = nv.drawBitmap;
  if (!bm || !state.info) return;
  const known = Array.isArray(counts) && counts.length === 4
    && counts.reduce((a, b) => a + b, 0) === bm.length;
  const n = known ? counts.slice() : [0, 0, 0, 0];
  if (!known) for (let i = 0; i < bm.length; i++) n[bm[i] & 3]++;
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
    createDrawingToFill();
    nv.drawBitmap.set(keep);
    nv.drawUndoBitmaps = undo; nv.currentDrawUndoBitmap = undoAt;
    nv.refreshDrawing(true);
  }
}

// NiiVue's createEmptyDrawing allocates the drawing's bitmaps and texture, then records the
// empty bitmap as an undo state and uploads it (8.9 MB of zeros for 240 x 240 x 155, then a
// scan of all of them for a non-zero voxel: ~0.1 s on the page's thread, measured). This page
// always fills the new bitmap right away and records or restores the undo states itself, so
// those two steps are skipped while it runs; the caller uploads the filled bitmap.
function createDrawingToFill() {
  const skipped = ["drawAddUndoBitmap", "refreshDrawing"];
  const own = skipped.filter((k) => Object.prototype.hasOwnProperty.call(nv, k));
  if (own.length) { nv.createEmptyDrawing(); return; } // not NiiVue's methods: leave them be
  for (const k of skipped) nv[k] = () => {};
  try {
    nv.createEmptyDrawing();
  } finally {
    for (const k of skipped) delete nv[k];
  }
}

// The labels as the drawing: the server sends NiiVue's bitmap itself (RAS order, x fastest).
function setDrawing(bytes) {
  createDrawingToFill();
  if (nv.drawBitmap.length !== bytes.length) {
    throw new Error(`labels: ${bytes.length} voxels for a ${nv.drawBitmap.length}-voxel image`);
  }
  nv.drawBitmap.set(bytes);
  nv.drawClearAllUndoBitmaps();
  nv.drawAddUndoBitmap(); // the prediction is the first undo state
  nv.refreshDrawing(false);
}

// Resolves once the GPU has run the commands queued so far (a WebGL fence, polled: the page's
// thread stays free), or after `limitMs`.
function gpuDone(limitMs = 10000) {
  const gl = nv.gl;
  const sync = gl && gl.fenceSync ? gl.fenceSync(gl.SYNC_GPU_COMMANDS_COMPLETE, 0) : null;
  if (!sync) return Promise.resolve();
  gl.flush();
  const t0 = performance.now();
  return new Promise((resolve) => {
    const poll = () => {
      if (gl.getSyncParameter(sync, gl.SYNC_STATUS) === gl.SIGNALED || performance.now() - t0 > limitMs) {
        gl.deleteSync(sync);
        resolve();
      } else setTimeout(poll, 25);
    };
    poll();
  });
}

// After the first render: the other modalities, one at a time, so a switch is a local load.
// They start once the GPU has drawn the first frame: on a software WebGL the server's encoding
// and the downloads would otherwise take the CPU from that frame.
async function prefetchOthers(id, mods) {
  for (const mod of mods) {
    if (state.caseId !== id) return;
    const p = imageBlob(id, mod);
    state.prefetched[mod] = p;
    try { await p; } catch (e) { delete state.prefetched[mod]; }
  }
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
    await oneDraw(async () => {
      await loadBackground(mod);
      // NiiVue queued the image's upload and orient pass; flushed now, the (software) GPU runs
      // them while the labels are set up, instead of after.
      nv.gl.flush();
      marks.image = performance.now() - t0;
      setDrawing(await labels);
      marks.labels = performance.now() - t0;
      applyColormap();
      setTool(state.tool);
      updateVolumes(info.label_voxels);
    });
  } catch (e) {
    showError(e.message); return;
  }
  marks.drawn = performance.now() - t0;
  const prov = Object.assign({ prediction: info.prediction, shown: labelsShown(info.labels),
    label_values: info.label_convention, grid: `${info.shape.join("x")} @ ${info.spacing_mm.join("x")} mm`,
    saves_to: info.saved_to }, info.provenance);
  $("provenance").textContent = JSON.stringify(prov, null, 1);
  $("model").textContent = modelLine(info.provenance || {});
  $("send").hidden = !info.can_send;
  state.openedAt = performance.now(); state.firstEditAt = null; state.redo = [];
  state.ready = true;
  state.openMs = performance.now() - t0;
  state.sinceNavigationMs = performance.now(); // the page's clock starts at navigation
  state.openMarks = marks; // ms since the click: case info, image loaded, labels set, drawn
  const shown = info.labels && info.labels.shown === "correction" ? ` · ${labelsShown(info.labels)}` : "";
  status(`${id} opened in ${(state.openMs / 1000).toFixed(2)} s${shown}`);
  gpuDone().then(() => prefetchOthers(id, info.modalities.filter((m) => m !== mod)));
}

// Which labels the case opened with: the server shows the latest saved correction when there is
// one (a further save builds on it), else the prediction.
function labelsShown(l) {
  if (!l) return "";
  if (l.shown === "correction" && l.recorded === false)  // a save whose record failed
    return `showing the saved correction ${l.file} (file time ${l.saved_at}; not in its edit record: save again to record it)`;
  if (l.shown === "correction") return `showing the saved correction ${l.file} (saved at ${l.saved_at})`;
  return l.shown === "prediction" ? `showing the prediction ${l.file}` : "no labels yet";
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
    // the next save records the time since this one, so a case's entries add up to its total
    state.openedAt = now; state.firstEditAt = null;
    const total = r.since_prediction ? `, ${r.since_prediction.voxels_changed} since the prediction` : "";
    status(`saved ${r.corrected}${r.seg ? " + " + r.seg : ""}: ${r.voxels_changed} voxels changed${total}`);
  } catch (e) { showError(`save failed: ${e.message}`); status(""); }
}

async function send() {
  try {
    const r = await api(`api/cases/${encodeURIComponent(state.caseId)}/send`, { method: "POST" });
    status(r.sending ? "queued and sending to the PACS" : "queued in the node's outbox (sent at its next start)");
  } catch (e) { showError(`send failed: ${e.message}`); }
}

async function main() {
  const { listed, early } = boot; // started before NiiVue attached
  // No scene is drawn until the first case is (or fails to be) shown: NiiVue would draw its
  // empty scene when its font arrives and for each setting made here (setView), full-canvas
  // draws on a software WebGL, each frame then read back by the compositor while the page's
  // thread waits (Chrome trace), all while the case downloads. openCase's oneDraw draws once.
  nv.isBusy = true;
  try {
    await boot2(listed, early);
  } finally {
    if (nv.isBusy) { nv.isBusy = false; nv.drawScene(); } // no case opened: draw the empty scene
    if (window.history.replaceState) window.history.replaceState(null, "", location.pathname); // token out of the address bar
  }
}

async function boot2(listed, early) {
  state.stubbedShaders = await attachWithoutUnusedShaders(() => nv.attachTo("gl")); // shaders exist now
  state.bootMarks.attached = performance.now();
  state.gradientSkipped = skipGradientPasses();
  state.zeroUploadsSkipped = skipZeroUploads();
  state.plainOrient = chooseOrientShaders();
  state.fastCalMinMax = fastCalMinMax();
  for (const b of document.querySelectorAll("#views button")) b.onclick = () => setView(+b.dataset.view);
  for (const b of document.querySelectorAll("#tools button")) b.onclick = () => setTool(b.dataset.tool);
  $("penLabel").onchange = () => setTool(state.tool);
  $("penSize").onchange = () => setTool(state.tool);
  $("overlayMode").onchange = () => { renderToggles(); applyColormap(); };
  $("opacity").oninput = applyColormap;
  $("modality").onchange = (e) => oneDraw(() => loadBackground(e.target.value))
    .catch((err) => showError(err.message));
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
}
main().catch((e) => showError(e.message));
