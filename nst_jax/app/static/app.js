"use strict";
// The nst_jax page: uploads, AdaIN with live sliders, Gatys runs streamed over server-sent events.
const $ = (id) => document.getElementById(id);

function showMessage(text) {
  const box = $("message");
  box.textContent = text || "";
  box.hidden = !text;
}

async function api(path, options) {
  const response = await fetch(path, options);
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : null;
  if (!response.ok) {
    throw new Error(body && body.error ? body.error : `the server answered ${response.status}`);
  }
  return body;
}

// ---- loss curves: log10 of each term against the iteration

const COLORS = { total: "#222", content: "#2a6fdb", style: "#e07b00", tv: "#6a3" };

function drawCurves(canvas, curves, total) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 36;
  ctx.clearRect(0, 0, w, h);
  const points = Object.values(curves).flat().filter((p) => p[1] !== null && p[1] > 0);
  if (!points.length) return;
  const logs = points.map((p) => Math.log10(p[1]));
  let lo = Math.min(...logs), hi = Math.max(...logs);
  if (hi - lo < 1e-6) { lo -= 0.5; hi += 0.5; }
  const xmax = Math.max(total || 0, ...points.map((p) => p[0]), 1);
  const X = (i) => pad + (w - pad - 8) * i / xmax;
  const Y = (v) => h - pad + (pad + 8 - h) * (Math.log10(v) - lo) / (hi - lo);
  ctx.strokeStyle = "#bbb"; ctx.beginPath(); ctx.moveTo(pad, 8); ctx.lineTo(pad, h - pad); ctx.lineTo(w - 8, h - pad); ctx.stroke();
  ctx.fillStyle = "#555"; ctx.font = "11px sans-serif";
  ctx.fillText(`1e${hi.toFixed(1)}`, 2, 14); ctx.fillText(`1e${lo.toFixed(1)}`, 2, h - pad);
  ctx.fillText("0", pad, h - pad + 14); ctx.fillText(String(xmax), w - 40, h - pad + 14);
  let legend = pad + 4;
  for (const [name, pts] of Object.entries(curves)) {
    ctx.strokeStyle = COLORS[name] || "#888"; ctx.beginPath();
    let started = false;
    for (const [i, v] of pts) {
      if (v === null || v <= 0) continue;
      if (started) ctx.lineTo(X(i), Y(v)); else { ctx.moveTo(X(i), Y(v)); started = true; }
    }
    ctx.stroke();
    ctx.fillStyle = COLORS[name] || "#888"; ctx.fillText(name, legend, h - 8); legend += 60;
  }
}

function formatSeconds(s) {
  if (s === null || s === undefined) return "";
  return s < 90 ? `${Math.round(s)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

// ---- a run's progress: status line, image refresh, loss curve

function watchFeed(eventsUrl, frameUrl, onFinish) {
  const status = $("g-status"), image = $("g-image"), canvas = $("g-curve");
  const source = new EventSource(eventsUrl);
  let frame = 0;
  image.onload = () => { image.hidden = false; image.dataset.updates = String(Number(image.dataset.updates) + 1); };
  source.onmessage = (event) => {
    const s = JSON.parse(event.data);
    let text = s.status;
    if (s.status === "queued") text = `queued: ${s.position} run(s) ahead`;
    else if (s.status === "running") text = s.iteration ? `iteration ${s.iteration} of ${s.total}` + (s.eta !== null ? `, about ${formatSeconds(s.eta)} left` : "") : (s.message || "starting");
    else text = s.message || s.status;
    status.textContent = text;
    if (s.frame !== frame) {
      frame = s.frame;
      image.src = `${frameUrl}?v=${frame}`;
    }
    drawCurves(canvas, s.curves, s.total);
    if (["done", "stopped", "error"].includes(s.status)) {
      source.close();
      if (s.status === "error") showMessage(s.message);
      status.dataset.status = s.status;
      if (onFinish) onFinish(s);
    } else {
      status.dataset.status = s.status;
    }
  };
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) status.dataset.status = "disconnected";
  };
  return source;
}

// ---- the app page

function setupApp() {
  const versions = { content: 0, style: 0, style2: 0 };
  let adainShown = false;

  function refreshThumb(slot) {
    const img = $(`thumb-${slot}`);
    img.src = `/api/input/${slot}?v=${versions[slot]}`;
    img.hidden = false;
  }

  async function upload(slot, file) {
    showMessage("");
    try {
      const r = await api(`/api/upload/${slot}`, {
        method: "POST", body: file,
        headers: { "Content-Type": "application/octet-stream", "X-Filename": encodeURIComponent(file.name) },
      });
      versions[slot] = r.version;
      refreshThumb(slot);
      const label = $(`name-${slot}`);
      if (label) label.textContent = `${r.name} (${r.width}x${r.height})`;
      if (slot === "style2") { $("empty-style2").hidden = true; $("remove-style2").hidden = false; $("mix").disabled = false; }
      if (adainShown) renderAdain();
    } catch (err) {
      showMessage(err.message);
    }
  }

  for (const slot of ["content", "style", "style2"]) {
    const input = $(`file-${slot}`), drop = document.querySelector(`#slot-${slot} .drop`);
    input.addEventListener("change", () => { if (input.files.length) upload(slot, input.files[0]); input.value = ""; });
    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault(); drop.classList.remove("over");
      if (e.dataTransfer.files.length) upload(slot, e.dataTransfer.files[0]);
    });
  }
  refreshThumb("content"); refreshThumb("style");
  $("remove-style2").addEventListener("click", async () => {
    try {
      await api("/api/upload/style2", { method: "DELETE" });
      $("thumb-style2").hidden = true; $("empty-style2").hidden = false; $("remove-style2").hidden = true;
      $("mix").value = "0"; $("mix-value").value = "0"; $("mix").disabled = true;
      if (adainShown) renderAdain();
    } catch (err) { showMessage(err.message); }
  });

  // AdaIN: one request in flight; a slider moved meanwhile sends its latest value when it returns.
  let busy = false, pending = false;
  async function renderAdain() {
    if (busy) { pending = true; return; }
    busy = true; $("adain").dataset.busy = "true";
    const settings = {
      size: Number($("adain-size").value), alpha: Number($("alpha").value),
      preserve_color: $("preserve").checked, mix: $("mix").disabled ? 0 : Number($("mix").value),
    };
    const t0 = performance.now();
    try {
      const r = await api("/api/adain", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(settings) });
      const img = $("adain-image");
      await new Promise((resolve) => { img.onload = resolve; img.onerror = resolve; img.src = r.image; });
      img.hidden = false;
      img.dataset.version = String(Number(img.dataset.version) + 1);
      adainShown = true;
      $("adain-stats").textContent = `${r.width}x${r.height}, ${Math.round(performance.now() - t0)} ms ` +
        `(server ${Math.round(r.seconds * 1000)} ms, ${r.encoded ? "encoder + decoder" : "decoder only"})`;
      $("adain-command").textContent = r.command;
      $("adain-download").hidden = false; $("adain-download16").hidden = false;
      showMessage("");
    } catch (err) {
      showMessage(err.message);
    } finally {
      busy = false;
      if (pending) { pending = false; renderAdain(); } else $("adain").dataset.busy = "false";
    }
  }
  $("adain-run").addEventListener("click", renderAdain);
  for (const [id, out] of [["alpha", "alpha-value"], ["mix", "mix-value"]]) {
    $(id).addEventListener("input", () => { $(out).value = $(id).value; if (adainShown) renderAdain(); });
  }
  $("preserve").addEventListener("change", () => { if (adainShown) renderAdain(); });

  // Gatys: Start queues a run and watches it; Stop ends it after its current chunk.
  let current = null, source = null;
  $("g-start").addEventListener("click", async () => {
    showMessage("");
    const settings = {
      size: Number($("g-size").value), iterations: Number($("g-iterations").value),
      content_weight: Number($("g-content-weight").value), style_weight: Number($("g-style-weight").value),
      color: $("g-color").value, optimizer: $("g-optimizer").value, update_every: Number($("g-update").value),
    };
    try {
      const r = await api("/api/gatys", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(settings) });
      if (source) source.close();
      current = r.run;
      $("g-command").textContent = r.command;
      $("g-image").dataset.updates = "0";
      $("g-stop").disabled = false;
      $("g-status").dataset.status = "queued";
      for (const [id, bits] of [["g-download", 8], ["g-download16", 16]]) {
        $(id).href = `/api/download/${r.run}?bits=${bits}`; $(id).hidden = true;
      }
      source = watchFeed(`/api/runs/${r.run}/events`, `/api/runs/${r.run}/frame`, (s) => {
        if (current === r.run) {
          $("g-stop").disabled = true;
          if (s.frame > 0) { $("g-download").hidden = false; $("g-download16").hidden = false; }
        }
      });
    } catch (err) {
      showMessage(err.message);
    }
  });
  $("g-stop").addEventListener("click", async () => {
    if (current === null) return;
    try { await api(`/api/runs/${current}/stop`, { method: "POST" }); } catch (err) { showMessage(err.message); }
  });

  // Closing the tab ends the session: its runs stop and its files are deleted.
  window.addEventListener("pagehide", () => navigator.sendBeacon("/api/session/close"));
}

if (document.body.dataset.mode === "live") {
  watchFeed("/events", "/frame");
} else {
  setupApp();
}
