// The voiceprint page: record from the microphone (or pick a file), then register or recognise
// it through the server's API. Plain script, no build step, nothing loaded from elsewhere.
"use strict";

const KEY_STORAGE = "mvector-api-key";
const $ = (id) => document.getElementById(id);
let recording = null;  // {blob, filename} of the audio to send next

function apiKey() {
  return $("api-key").value.trim();
}

function show(element, text, kind) {
  element.textContent = text;  // never innerHTML: names and messages come from users
  element.className = "status" + (kind ? " " + kind : "");
}

function describeError(status, body) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  return `HTTP ${status}`;
}

async function api(method, path, form) {
  const headers = {};
  if (apiKey()) headers.Authorization = "Bearer " + apiKey();
  const response = await fetch(path, {method, headers, body: form});
  let body = null;
  try {
    body = await response.json();
  } catch (_) { /* an answer that is not JSON: described by its status */ }
  if (!response.ok) throw new Error(describeError(response.status, body));
  return body;
}

function preferredMimeType() {
  const candidates = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/webm", "audio/ogg"];
  return candidates.find((type) => window.MediaRecorder && MediaRecorder.isTypeSupported(type)) || "";
}

function useRecording(blob, filename, description) {
  recording = {blob, filename};
  const playback = $("playback");
  if (playback.src) URL.revokeObjectURL(playback.src);
  playback.src = URL.createObjectURL(blob);
  playback.hidden = false;
  $("register").disabled = false;
  $("recognize").disabled = false;
  show($("recording-status"), description, "ok");
}

async function record() {
  const seconds = Number($("seconds").value) || 3;
  const button = $("record");
  button.disabled = true;
  try {
    const stream = await navigator.mediaDevices.getUserMedia({audio: true});
    const mimeType = preferredMimeType();
    const recorder = new MediaRecorder(stream, mimeType ? {mimeType} : undefined);
    const chunks = [];
    recorder.ondataavailable = (event) => { if (event.data.size) chunks.push(event.data); };
    const stopped = new Promise((resolve) => { recorder.onstop = resolve; });
    recorder.start();
    show($("recording-status"), `Recording ${seconds} s… speak now`);
    await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
    recorder.stop();
    await stopped;
    stream.getTracks().forEach((track) => track.stop());
    const type = recorder.mimeType || mimeType || "audio/webm";
    const blob = new Blob(chunks, {type});
    const extension = type.includes("ogg") ? "ogg" : "webm";
    useRecording(blob, `recording.${extension}`, `Recorded ${seconds} s (${type}, ${blob.size} bytes).`);
  } catch (error) {
    show($("recording-status"), `Cannot record: ${error.message}`, "error");
  } finally {
    button.disabled = false;
  }
}

function audioForm() {
  const form = new FormData();
  form.append("audio", recording.blob, recording.filename);
  return form;
}

async function register() {
  const name = $("name").value.trim();
  if (!name) {
    show($("result"), "Type the speaker's name first.", "error");
    return;
  }
  const form = audioForm();
  form.append("name", name);
  show($("result"), "Registering…");
  try {
    const answer = await api("POST", "/register", form);
    show($("result"), `Registered: ${answer.name} (${answer.seconds} s of speech)`, "ok");
    await refreshUsers();
  } catch (error) {
    show($("result"), `Not registered: ${error.message}`, "error");
  }
}

async function recognize() {
  show($("result"), "Recognising…");
  try {
    const answer = await api("POST", "/recognize", audioForm());
    const threshold = answer.threshold.toFixed(4);
    if (answer.recognized) {
      show($("result"), `Recognised: ${answer.name} (score ${answer.score.toFixed(4)}, threshold ${threshold})`, "ok");
    } else if (answer.score === null) {
      show($("result"), "Not recognised: nobody is registered yet.", "error");
    } else {
      show($("result"), `Not recognised: best score ${answer.score.toFixed(4)} is below the threshold ${threshold}`, "error");
    }
  } catch (error) {
    show($("result"), `Recognition failed: ${error.message}`, "error");
  }
}

async function removeUser(name) {
  try {
    await api("DELETE", "/users/" + encodeURIComponent(name));
    show($("result"), `Removed: ${name}`, "ok");
  } catch (error) {
    show($("result"), `Not removed: ${error.message}`, "error");
  }
  await refreshUsers();
}

async function refreshUsers() {
  const list = $("users");
  try {
    const answer = await api("GET", "/users");
    list.replaceChildren(...answer.users.map((name) => {
      const item = document.createElement("li");
      const label = document.createElement("span");
      label.textContent = name;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "Remove";
      remove.addEventListener("click", () => removeUser(name));
      item.append(label, remove);
      return item;
    }));
    if (!answer.users.length) list.replaceChildren(Object.assign(document.createElement("li"), {textContent: "(none)"}));
  } catch (error) {
    list.replaceChildren(Object.assign(document.createElement("li"), {textContent: `Cannot list users: ${error.message}`}));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
  $("api-key").addEventListener("input", () => sessionStorage.setItem(KEY_STORAGE, apiKey()));
  $("api-key").addEventListener("change", refreshUsers);
  $("record").addEventListener("click", record);
  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) useRecording(file, file.name, `Using ${file.name} (${file.size} bytes).`);
  });
  $("register").addEventListener("click", register);
  $("recognize").addEventListener("click", recognize);
  $("refresh-users").addEventListener("click", refreshUsers);
  refreshUsers();
});
