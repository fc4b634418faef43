// The page's glue: buttons and canvases on one side, the haba library (compiled to
// WebAssembly, computing through WebGPU or on the CPU) on the other. Every result comes
// back as a promise: a browser cannot wait for its GPU synchronously.
//
// URL options: `?demo` runs the whole tour by itself (load the shipped set, draw it, train,
// show the accuracy); `?cpu` uses the CPU backend even where WebGPU exists;
// `?epochs=N` sets the demo's training length; `?distill=N` ends the demo with a
// distillation of N iterations.
import init, { Session } from "./haba_web.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const state = (s) => (document.body.dataset.state = s);
const status = (text) => ($("status").textContent = text);
// Give the browser a moment to paint between steps of a long loop.
const frame = () => new Promise((resolve) => setTimeout(resolve, 0));

let session = null;
let busy = false;

function fail(err) {
  const message = err && err.message ? err.message : String(err);
  console.error(message);
  status(`error: ${message}`);
  state("error");
  busy = false;
}

// --- 1. loading a set -------------------------------------------------------------

function load(bytes, name) {
  const line = session.load(bytes);
  $("artifact-line").textContent = `${name}: ${line}`;
  const select = $("class");
  select.length = 1;
  session.classes().forEach((c, i) => select.add(new Option(`${i}: ${c}`, i)));
}

async function loadShipped() {
  const reply = await fetch("./distilled.safetensors");
  if (!reply.ok) throw new Error(`the shipped set could not be fetched (${reply.status})`);
  load(new Uint8Array(await reply.arrayBuffer()), "shipped set");
  await draw();
}

async function loadFile(file) {
  load(new Uint8Array(await file.arrayBuffer()), file.name);
  await draw();
}

// --- 2. drawing ---------------------------------------------------------------------

function paint(canvas, picture) {
  canvas.width = Math.max(picture.width, 1);
  canvas.height = Math.max(picture.height, 1);
  if (picture.width > 0) {
    const pixels = new ImageData(new Uint8ClampedArray(picture.rgba()), picture.width, picture.height);
    canvas.getContext("2d").putImageData(pixels, 0, 0);
  }
  zoom(canvas);
}

function zoom(canvas) {
  const z = Number($("zoom").value);
  canvas.style.width = `${canvas.width * z}px`;
  canvas.style.height = `${canvas.height * z}px`;
}

async function draw() {
  const cls = Number($("class").value);
  const stretch = $("stretch").checked;
  const bases = await session.bases(cls, stretch).read();
  paint($("bases"), bases);
  const matrix = await session.matrix(cls, stretch).read();
  paint($("matrix"), matrix);
  $("tiles").textContent = String(matrix.tiles);
  status(`drew ${matrix.tiles} tiles of ${matrix.tile_width}x${matrix.tile_height} on ${session.backend()}`);
  state("drawn");
}

// --- 3. training --------------------------------------------------------------------

function plotLoss(losses) {
  const canvas = $("loss");
  const g = canvas.getContext("2d");
  const [w, h, pad] = [canvas.width, canvas.height, 24];
  g.clearRect(0, 0, w, h);
  g.strokeStyle = "#999";
  g.strokeRect(pad, 4, w - pad - 4, h - pad - 4);
  g.fillStyle = "#444";
  g.font = "11px sans-serif";
  g.fillText("training loss", pad + 6, 16);
  if (losses.length < 1) return;
  const max = Math.max(...losses);
  const x = (i) => pad + ((w - pad - 8) * i) / Math.max(losses.length - 1, 1);
  const y = (v) => 4 + (h - pad - 8) * (1 - v / max);
  g.fillText(max.toFixed(2), 0, 12);
  g.fillText("0", 10, h - pad);
  g.fillText(`epoch ${losses.length}`, w - 70, h - 6);
  g.strokeStyle = "#2a6df4";
  g.beginPath();
  losses.forEach((v, i) => (i ? g.lineTo(x(i), y(v)) : g.moveTo(x(i), y(v))));
  g.stroke();
}

async function train(epochs) {
  const model = $("model").value;
  session.start_training(model, epochs, BigInt(Date.now() % 1e6));
  state("training");
  $("accuracy").textContent = "–";
  const losses = [];
  const bar = $("train-progress");
  bar.max = epochs;
  const start = performance.now();
  for (let e = 0; e < epochs; e++) {
    losses.push(await session.train_epoch().read());
    bar.value = e + 1;
    plotLoss(losses);
    status(`training ${model}: epoch ${e + 1}/${epochs}, loss ${losses[e].toFixed(3)}`);
    await frame();
  }
  const accuracy = await session.test_accuracy().read();
  const seconds = (performance.now() - start) / 1000;
  $("accuracy").textContent = `${(100 * accuracy).toFixed(1)} %`;
  status(`trained ${model} for ${epochs} epochs in ${seconds.toFixed(1)} s on ${session.backend()}`);
  state("trained");
}

// --- 4. distilling ------------------------------------------------------------------

async function distill(iterations) {
  const run = session.start_distill(iterations, BigInt(Date.now() % 1e6));
  state("distilling");
  const bar = $("distill-progress");
  bar.max = iterations;
  const start = performance.now();
  let last = performance.now();
  while (run.iteration() < iterations) {
    const loss = await run.step().read();
    bar.value = run.iteration();
    status(`distilling: iteration ${run.iteration()}/${iterations}, DM loss ${loss.toFixed(3)}`);
    // Redraw the matrix as it learns, every few seconds.
    if (performance.now() - last > 3000 || run.iteration() === iterations) {
      $("artifact-line").textContent = `distilling: ${session.adopt(run)}`;
      await draw();
      last = performance.now();
    }
    await frame();
  }
  const bytes = await run.download().read();
  const link = $("download");
  link.href = URL.createObjectURL(new Blob([bytes], { type: "application/octet-stream" }));
  link.hidden = false;
  const seconds = (performance.now() - start) / 1000;
  status(`distilled ${iterations} iterations in ${seconds.toFixed(1)} s; the result is loaded above`);
  state("distilled");
}

// --- wiring -------------------------------------------------------------------------

function guard(task) {
  return async (...args) => {
    if (busy || !session) return;
    busy = true;
    try {
      await task(...args);
    } catch (err) {
      fail(err);
    }
    busy = false;
  };
}

function wire() {
  $("shipped").onclick = guard(loadShipped);
  $("file").onchange = guard(async () => $("file").files[0] && loadFile($("file").files[0]));
  const drop = $("drop");
  drop.ondragover = (e) => (e.preventDefault(), drop.classList.add("over"));
  drop.ondragleave = () => drop.classList.remove("over");
  drop.ondrop = guard(async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) await loadFile(e.dataTransfer.files[0]);
  });
  $("class").onchange = guard(draw);
  $("stretch").onchange = guard(draw);
  $("zoom").oninput = () => ["bases", "matrix"].forEach((id) => zoom($(id)));
  $("train").onclick = guard(() => train(Number($("epochs").value)));
  $("distill").onclick = guard(() => distill(Number($("iterations").value)));
}

async function main() {
  state("loading");
  wire();
  try {
    await init();
    session = await Session.open(params.has("cpu"), 0n);
  } catch (err) {
    return fail(err);
  }
  $("backend").textContent = session.on_gpu() ? session.backend() : `CPU (WebAssembly): ${session.backend()}`;
  if (!session.on_gpu()) {
    $("webgpu-note").textContent = params.has("cpu")
      ? "asked for with ?cpu"
      : `no WebGPU: ${session.reason()}. Training and distilling run on the CPU.`;
  }
  $("test-count").textContent = String(session.test_images());
  status(`ready on ${session.backend()} (${session.reason()})`);
  state("ready");
  if (params.has("demo")) {
    const epochs = Number(params.get("epochs") || 60);
    await guard(async () => {
      await loadShipped();
      await train(epochs);
      if (params.has("distill")) await distill(Number(params.get("distill")));
    })();
  }
}

main();
