// The voiceprint page: record from the microphone (or pick a file), then register, recognise or
// diarize it through the server's API. Plain script, no build step, nothing loaded from elsewhere.
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
  $("diarize").disabled = false;
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

const TIMELINE_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];

function drawTimeline(segments, speakers) {
  // One row per speaker, a bar per segment, positioned in percent of the recording's speech span.
  const timeline = $("timeline");
  const end = Math.max(...segments.map((s) => s.end));
  const rows = speakers.map((speaker, index) => {
    const row = Object.assign(document.createElement("div"), {className: "timeline-row"});
    const name = Object.assign(document.createElement("span"), {className: "timeline-name", textContent: speaker});
    name.title = speaker;
    const track = Object.assign(document.createElement("div"), {className: "timeline-track"});
    for (const segment of segments.filter((s) => s.speaker === speaker)) {
      const bar = Object.assign(document.createElement("div"), {className: "timeline-bar"});
      bar.style.left = `${(100 * segment.start) / end}%`;
      bar.style.width = `${(100 * (segment.end - segment.start)) / end}%`;
      bar.style.background = TIMELINE_COLOURS[index % TIMELINE_COLOURS.length];
      bar.title = `${speaker}: ${segment.start.toFixed(2)}–${segment.end.toFixed(2)} s`;
      track.append(bar);
    }
    row.append(name, track);
    return row;
  });
  const axis = Object.assign(document.createElement("div"), {className: "timeline-axis"});
  axis.append(Object.assign(document.createElement("span"), {textContent: "0 s"}),
              Object.assign(document.createElement("span"), {textContent: `${end.toFixed(1)} s`}));
  timeline.replaceChildren(...rows, axis);
  timeline.hidden = false;
}

async function diarize() {
  const form = audioForm();
  const count = $("num-speakers").value.trim();
  if (count) form.append("num_speakers", count);
  if ($("name-speakers").checked) form.append("name_speakers", "true");
  show($("diarize-status"), "Diarizing…");
  $("timeline").hidden = true;
  try {
    const answer = await api("POST", "/diarize", form);
    if (!answer.segments.length) {
      show($("diarize-status"), "No speech found.", "error");
      return;
    }
    show($("diarize-status"), `${answer.speakers.length} speaker(s), ${answer.segments.length} segment(s).`, "ok");
    drawTimeline(answer.segments, answer.speakers);
  } catch (error) {
    show($("diarize-status"), `Diarization failed: ${error.message}`, "error");
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
  $("diarize").addEventListener("click", diarize);
  $("refresh-users").addEventListener("click", refreshUsers);
  refreshUsers();
});
