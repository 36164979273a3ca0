// The portal's own script: confirmations, the chunked package upload, log auto-scroll.
// Loaded from this origin only (the Content-Security-Policy forbids inline scripts).
"use strict";

(function () {
  // -- SHA-256, incremental, so multi-GB packages hash chunk by chunk with flat memory. ------
  const K = new Uint32Array([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2]);

  class Sha256 {
    constructor() {
      this.h = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
        0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
      this.w = new Uint32Array(64);
      this.buf = new Uint8Array(64);
      this.bufLen = 0;
      this.length = 0;
    }

    update(data) {
      let i = 0;
      this.length += data.length;
      if (this.bufLen) {
        const take = Math.min(64 - this.bufLen, data.length);
        this.buf.set(data.subarray(0, take), this.bufLen);
        this.bufLen += take;
        i = take;
        if (this.bufLen === 64) { this.block(this.buf, 0); this.bufLen = 0; }
      }
      for (; i + 64 <= data.length; i += 64) this.block(data, i);
      if (i < data.length) { this.buf.set(data.subarray(i), 0); this.bufLen = data.length - i; }
    }

    block(d, off) {
      const w = this.w, h = this.h;
      const rotr = (x, n) => (x >>> n) | (x << (32 - n));
      for (let t = 0; t < 16; t++) {
        const j = off + 4 * t;
        w[t] = (d[j] << 24) | (d[j + 1] << 16) | (d[j + 2] << 8) | d[j + 3];
      }
      for (let t = 16; t < 64; t++) {
        const a = w[t - 15], b = w[t - 2];
        const s0 = rotr(a, 7) ^ rotr(a, 18) ^ (a >>> 3);
        const s1 = rotr(b, 17) ^ rotr(b, 19) ^ (b >>> 10);
        w[t] = (w[t - 16] + s0 + w[t - 7] + s1) | 0;
      }
      let [a, b, c, dd, e, f, g, hh] = h;
      for (let t = 0; t < 64; t++) {
        const S1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
        const ch = (e & f) ^ (~e & g);
        const t1 = (hh + S1 + ch + K[t] + w[t]) | 0;
        const S0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
        const maj = (a & b) ^ (a & c) ^ (b & c);
        const t2 = (S0 + maj) | 0;
        hh = g; g = f; f = e; e = (dd + t1) | 0; dd = c; c = b; b = a; a = (t1 + t2) | 0;
      }
      h[0] += a; h[1] += b; h[2] += c; h[3] += dd; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
    }

    hex() {
      const bits = this.length * 8;
      const padLen = (this.bufLen < 56 ? 56 : 120) - this.bufLen;
      const pad = new Uint8Array(padLen + 8);
      pad[0] = 0x80;
      const hi = Math.floor(bits / 0x100000000), lo = bits >>> 0;
      for (let i = 0; i < 4; i++) {
        pad[padLen + i] = (hi >>> (24 - 8 * i)) & 0xff;
        pad[padLen + 4 + i] = (lo >>> (24 - 8 * i)) & 0xff;
      }
      const length = this.length;
      this.update(pad);
      this.length = length;
      return Array.from(this.h, (x) => x.toString(16).padStart(8, "0")).join("");
    }
  }

  // -- chunked, resumable upload through the partner API (session cookie + CSRF header) ------
  const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function problem(response) {
    try {
      const body = await response.json();
      return new Error(body.detail || body.title || response.statusText);
    } catch (_) {
      return new Error(`${response.status} ${response.statusText}`);
    }
  }

  function sendChunk(uploadId, blob, offset, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("PATCH", `/v1/partner/uploads/${uploadId}`);
      xhr.setRequestHeader("Upload-Offset", String(offset));
      xhr.setRequestHeader("Content-Type", "application/offset+octet-stream");
      xhr.setRequestHeader("X-CSRF-Token", csrf());
      xhr.upload.onprogress = (event) => onProgress(event.loaded);
      xhr.onload = () => {
        const next = Number(xhr.getResponseHeader("Upload-Offset"));
        if (xhr.status === 204 || (xhr.status === 409 && Number.isFinite(next) && xhr.getResponseHeader("Upload-Offset"))) {
          resolve(next);
        } else {
          let detail = xhr.statusText;
          try { detail = JSON.parse(xhr.responseText).detail || detail; } catch (_) { /* not JSON */ }
          const error = new Error(detail);
          error.retry = xhr.status >= 500 || xhr.status === 409;
          reject(error);
        }
      };
      xhr.onerror = () => { const e = new Error("the connection dropped"); e.retry = true; reject(e); };
      xhr.send(blob);
    });
  }

  async function serverOffset(uploadId) {
    const response = await fetch(`/v1/partner/uploads/${uploadId}`, { method: "HEAD", credentials: "same-origin" });
    if (!response.ok) throw new Error("the upload could not be resumed");
    return Number(response.headers.get("Upload-Offset"));
  }

  async function uploadPackage(form) {
    const file = form.querySelector("#upload-file").files[0];
    const bar = form.querySelector("#upload-progress");
    const status = form.querySelector("#upload-status");
    const button = form.querySelector("#upload-button");
    const chunkBytes = Number(form.dataset.chunkBytes) || 8 * 1024 * 1024;
    if (!file) return;
    const show = (text, cls) => { status.textContent = text; status.className = cls || "muted"; };
    const progress = (done) => {
      const pct = file.size ? Math.min(100, (100 * done) / file.size) : 100;
      bar.value = pct;
      show(`Uploading ${file.name}: ${pct.toFixed(0)}%`);
    };
    button.disabled = true;
    bar.hidden = false;
    bar.value = 0;
    try {
      let response = await fetch("/v1/partner/uploads", {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
        body: JSON.stringify({ model: form.dataset.model, size: file.size }),
      });
      if (!response.ok) throw await problem(response);
      const upload = await response.json();
      const hasher = new Sha256();
      let offset = 0, hashed = 0, failures = 0;
      while (offset < file.size) {
        const end = Math.min(offset + chunkBytes, file.size);
        try {
          offset = await sendChunk(upload.id, file.slice(offset, end), offset, (sent) => progress(offset + sent));
          failures = 0;
        } catch (error) {
          if (!error.retry || ++failures > 5) throw error;
          show(`Connection trouble; resuming (${failures}/5)…`);
          await sleep(500 * 2 ** failures);
          offset = await serverOffset(upload.id);
        }
        // Hash only what the server confirmed, so the digest covers exactly its bytes.
        while (hashed < offset) {
          const piece = new Uint8Array(await file.slice(hashed, Math.min(offset, hashed + chunkBytes)).arrayBuffer());
          hasher.update(piece);
          hashed += piece.length;
        }
        progress(offset);
      }
      show("Checking the package…");
      response = await fetch(`/v1/partner/uploads/${upload.id}/complete`, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
        body: JSON.stringify({ sha256: hasher.hex() }),
      });
      if (!response.ok) throw await problem(response);
      const version = await response.json();
      bar.value = 100;
      show(`Version ${version.number} is ready to deploy.`, "ok");
      setTimeout(() => window.location.assign(`${window.location.pathname}?notice=uploaded`), 600);
    } catch (error) {
      show(`Upload failed: ${error.message}`, "err");
      button.disabled = false;
    }
  }

  document.addEventListener("submit", (event) => {
    const form = event.target;
    const submitter = event.submitter || form.querySelector("[data-confirm]");
    if (submitter && submitter.dataset && submitter.dataset.confirm && !window.confirm(submitter.dataset.confirm)) {
      event.preventDefault();
      return;
    }
    if (form.id === "upload-form") {
      event.preventDefault();
      uploadPackage(form);
    }
  });

  // Keep the log view pinned to the newest line unless the reader scrolled up.
  document.addEventListener("htmx:beforeSwap", (event) => {
    const box = document.getElementById("log-box");
    if (box && event.detail.target && event.detail.target.id === "log-lines") {
      box.dataset.pinned = String(box.scrollHeight - box.scrollTop - box.clientHeight < 40);
    }
  });
  document.addEventListener("htmx:afterSwap", (event) => {
    const box = document.getElementById("log-box");
    if (box && event.detail.target && event.detail.target.id === "log-lines" && box.dataset.pinned !== "false") {
      box.scrollTop = box.scrollHeight;
    }
  });
  document.addEventListener("DOMContentLoaded", () => {
    const box = document.getElementById("log-box");
    if (box) box.scrollTop = box.scrollHeight;
    document.querySelectorAll("input.secret").forEach((input) => input.addEventListener("focus", () => input.select()));
  });

  window.mediagateSha256 = (bytes) => { const h = new Sha256(); h.update(bytes); return h.hex(); };
})();
