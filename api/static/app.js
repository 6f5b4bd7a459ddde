// maskflow web page: presigned POST straight to MinIO, then long-poll the task.
// The model selector lists GET /api/v1/models; the chosen one and the output options are
// signed into the upload (POST /api/v1/uploads binds them as x-amz-meta-*).
"use strict";

const API = "/api/v1";
const TOKEN_KEY = "maskflow.token";
const tokenInput = document.getElementById("token");
const drop = document.getElementById("drop");
const picker = document.getElementById("picker");
const list = document.getElementById("files");
const modelSelect = document.getElementById("model");
const modelHelp = document.getElementById("model-help");
let models = [];
let modelsRequest = 0; // only the newest listing counts (the token may change meanwhile)
let modelsTimer = null;

tokenInput.value = localStorage.getItem(TOKEN_KEY) || "";
tokenInput.addEventListener("input", () => {
  localStorage.setItem(TOKEN_KEY, tokenInput.value.trim());
  clearTimeout(modelsTimer);
  modelsTimer = setTimeout(loadModels, 300); // the listing needs the token too
});

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const token = tokenInput.value.trim();
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

// API errors are {"error": {"status", "code", "message"}}; anything else gets a short text.
async function api(method, path, body) {
  let resp;
  try {
    resp = await fetch(API + path, {
      method, headers: headers(body ? { "Content-Type": "application/json" } : {}),
      body: body ? JSON.stringify(body) : undefined,
    });
  } catch (e) {
    throw new Error("cannot reach the API (" + e.message + ")");
  }
  let doc = null;
  try { doc = await resp.json(); } catch (e) { /* not JSON */ }
  if (!resp.ok) {
    if (resp.status === 401) throw new Error("the API needs a valid token: enter it above");
    const msg = doc && doc.error ? doc.error.message : "HTTP " + resp.status;
    throw new Error(msg);
  }
  return doc;
}

function showModelHelp(problem) {
  const m = models.find((x) => x.name === modelSelect.value);
  modelHelp.classList.toggle("problem", Boolean(problem));
  const idle = m && !m.workers ? " (no worker serves it right now: its uploads wait)" : "";
  modelHelp.textContent = problem || (m ? `${m.good_for}; ${m.cost}${idle}` : "");
}

async function loadModels() {
  const n = ++modelsRequest;
  let doc;
  try {
    doc = await api("GET", "/models");
  } catch (e) {
    if (n === modelsRequest && !models.length) showModelHelp("models not listed: " + e.message);
    return;
  }
  if (n !== modelsRequest) return;
  const chosen = modelSelect.value;
  models = doc.models;
  modelSelect.innerHTML = "";
  for (const m of models) {
    const opt = document.createElement("option");
    opt.value = m.name;
    opt.textContent = m.name + (m.default ? " (default)" : "");
    opt.title = `${m.good_for}; ${m.cost}`;
    modelSelect.append(opt);
  }
  modelSelect.value = models.some((m) => m.name === chosen) ? chosen : doc.default;
  modelSelect.disabled = false;
  showModelHelp();
}

modelSelect.addEventListener("change", () => showModelHelp());

function row(file) {
  const li = document.createElement("li");
  li.className = "file";
  li.innerHTML = '<div class="head"><span class="name"></span><span class="status"></span>' +
                 '<span class="task"></span><span class="model"></span></div><p class="error" hidden></p>' +
                 '<div class="results" hidden></div>';
  li.querySelector(".name").textContent = file.name;
  list.prepend(li);
  return {
    li,
    status(s) {
      const el = li.querySelector(".status");
      el.textContent = s; el.className = "status " + s; li.dataset.status = s;
    },
    error(msg) {
      const el = li.querySelector(".error");
      el.textContent = msg; el.hidden = false;
      this.status("failed");
    },
    task(id) { li.dataset.taskId = id; li.querySelector(".task").textContent = id; },
    model(name) { li.dataset.model = name; li.querySelector(".model").textContent = "model " + name; },
    results(r) {
      const box = li.querySelector(".results");
      box.innerHTML = "";
      for (const [label, url, cls] of [["cut-out", r.segmented_image_url, "cutout"],
                                       ["mask", r.mask_image_url, "mask"]]) {
        const fig = document.createElement("figure");
        const img = document.createElement("img");
        img.className = cls; img.alt = label + " of " + file.name; img.src = url;
        const cap = document.createElement("figcaption");
        cap.textContent = label;
        fig.append(img, cap); box.append(fig);
      }
      box.hidden = false;
    },
  };
}

function chosenOptions() {
  const chosen = {};
  const value = (id) => document.getElementById(id).value;
  const checked = (id) => document.getElementById(id).checked;
  if (value("format")) chosen.format = value("format");
  if (checked("crop")) chosen.crop = "true";
  if (checked("use-background")) chosen.background = value("background");
  if (value("refine")) chosen.refine = value("refine");
  if (checked("post-process")) chosen.post_process = "true";
  return chosen;
}

async function process(file) {
  const ui = row(file);
  const model = modelSelect.value; // "" until the listing loaded: the API's default
  const options = chosenOptions();
  try {
    ui.status("uploading");
    const request = {
      filename: file.name, content_type: file.type || "application/octet-stream", size: file.size,
    };
    if (model) request.model = model; // the grant's fields then carry x-amz-meta-model
    if (Object.keys(options).length) request.options = options; // and x-amz-meta-<option>
    const grant = await api("POST", "/uploads", request);
    ui.task(grant.task_id);
    const form = new FormData();
    for (const [k, v] of Object.entries(grant.fields)) form.append(k, v);
    form.append("file", file); // S3 wants the file last
    let up;
    try {
      up = await fetch(grant.url, { method: "POST", body: form });
    } catch (e) {
      throw new Error("cannot reach object storage (" + e.message + ")");
    }
    if (!up.ok) {
      const text = await up.text();
      const code = (text.match(/<Code>([^<]*)<\/Code>/) || [])[1] || "HTTP " + up.status;
      throw new Error("upload refused by object storage: " + code);
    }
    ui.status("pending");
    for (;;) {
      const task = await api("GET", "/tasks/" + encodeURIComponent(grant.task_id) + "?wait=20");
      ui.status(task.status);
      if (task.status === "completed") {
        if (task.model) ui.model(task.model);
        ui.results(task.result);
        return;
      }
      if (task.status === "failed") { ui.error(task.error || "failed"); return; }
    }
  } catch (e) {
    ui.error(e.message);
  }
}

function handle(files) {
  for (const f of files) process(f);
}

picker.addEventListener("change", () => { handle(picker.files); picker.value = ""; });
for (const ev of ["dragenter", "dragover"]) {
  drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
}
for (const ev of ["dragleave", "drop"]) {
  drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
}
drop.addEventListener("drop", (e) => handle(e.dataTransfer.files));
loadModels();
