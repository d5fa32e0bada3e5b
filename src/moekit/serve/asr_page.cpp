// The page `moekit serve asr` answers GET / with: one self-contained HTML
// file (no external scripts), so it works on a machine without internet.
// The browser resamples the microphone to the model's rate (an AudioContext
// created at that rate), an AudioWorklet hands over the samples, and every
// 100 ms they go to the server as 16-bit PCM over the WebSocket protocol of
// asr_server.h, on the same host and port as the page.
//
// For tests and kiosks the query string can drive it: ?autostart=1 starts at
// load, &seconds=N stops after N s of audio, &continuous=0 asks for one
// result for the whole stream, &keep=1 keeps the PCM sent in window.sentPcm.
#include <string>

#include "moekit/serve/asr_server.h"

namespace moekit {

namespace {

const char* const kPage = R"HTML(<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>MoEKit speech recognition</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 48rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.4rem; }
  button { font-size: 1rem; padding: 0.5rem 1.2rem; margin-right: 0.5rem; }
  #status { margin: 1rem 0; color: #555; }
  #transcript { min-height: 8rem; border: 1px solid #ccc; border-radius: 6px; padding: 0.8rem; line-height: 1.5; }
  #partial { color: #888; }
  .final { display: block; }
  .error { color: #b00; }
</style>
</head>
<body>
<h1>MoEKit streaming speech recognition</h1>
<p>Press <b>Start</b>, allow the microphone and speak: the partial transcript appears grey while you talk and is
replaced by the final result at each pause.</p>
<button id="start">Start</button><button id="stop" disabled>Stop</button>
<label><input type="checkbox" id="continuous" checked> one result per sentence</label>
<div id="status">idle</div>
<div id="transcript"><span id="finals"></span><span id="partial"></span></div>
<script>
"use strict";
const SAMPLE_RATE = __SAMPLE_RATE__;
const startButton = document.getElementById("start");
const stopButton = document.getElementById("stop");
const statusLine = document.getElementById("status");
const finals = document.getElementById("finals");
const partial = document.getElementById("partial");
const query = new URLSearchParams(location.search);
const stopAfter = Number(query.get("seconds") || 0);
if (query.get("continuous") === "0") document.getElementById("continuous").checked = false;
let socket = null, context = null, media = null, node = null, pending = [], pendingLength = 0, sentLength = 0;
window.sentPcm = [];

// The worklet copies each 128-sample render quantum to the page.
const workletSource = `
class Tap extends AudioWorkletProcessor {
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) this.port.postMessage(channel.slice(0));
    return true;
  }
}
registerProcessor("tap", Tap);`;

function setStatus(text, isError) {
  statusLine.textContent = text;
  statusLine.className = isError ? "error" : "";
}

function sentence(nbest) {
  try {
    const list = JSON.parse(nbest);
    return list.length > 0 ? list[0].sentence : "";
  } catch (e) {
    return "";
  }
}

function sendPending(force) {
  if (!socket || socket.readyState !== WebSocket.OPEN) return;
  if (pendingLength < SAMPLE_RATE / 10 && !force) return;
  const pcm = new Int16Array(pendingLength);
  let offset = 0;
  for (const block of pending) {
    for (let i = 0; i < block.length; ++i) {
      const v = Math.max(-1, Math.min(1, block[i]));
      pcm[offset++] = v < 0 ? v * 32768 : v * 32767;
    }
  }
  pending = [];
  pendingLength = 0;
  if (pcm.length === 0) return;
  if (query.get("keep") === "1") window.sentPcm.push(pcm);
  socket.send(pcm.buffer);
  sentLength += pcm.length;
  if (stopAfter > 0 && sentLength >= stopAfter * SAMPLE_RATE && !stopButton.disabled) stop();
}

async function start() {
  startButton.disabled = true;
  sentLength = 0;
  window.sentPcm = [];
  finals.textContent = "";
  partial.textContent = "";
  try {
    media = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: false,
                                                                 noiseSuppression: false, autoGainControl: false } });
    context = new AudioContext({ sampleRate: SAMPLE_RATE });
    const url = URL.createObjectURL(new Blob([workletSource], { type: "application/javascript" }));
    await context.audioWorklet.addModule(url);
    node = new AudioWorkletNode(context, "tap");
    context.createMediaStreamSource(media).connect(node);
  } catch (e) {
    setStatus("microphone: " + e.message, true);
    stopAudio();
    startButton.disabled = false;
    return;
  }
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  socket = new WebSocket(scheme + location.host + "/");
  socket.binaryType = "arraybuffer";
  socket.onopen = () => {
    socket.send(JSON.stringify({ signal: "start", nbest: 1, sample_rate: SAMPLE_RATE, channels: 1,
                                 continuous_decoding: document.getElementById("continuous").checked }));
  };
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.status !== "ok") {
      setStatus("server: " + message.message, true);
      return;
    }
    if (message.type === "server_ready") {
      setStatus("listening");
      stopButton.disabled = false;
      node.port.onmessage = (e) => {
        pending.push(e.data);
        pendingLength += e.data.length;
        sendPending(false);
      };
    } else if (message.type === "partial_result") {
      partial.textContent = sentence(message.nbest);
    } else if (message.type === "final_result") {
      const line = document.createElement("span");
      line.className = "final";
      line.textContent = sentence(message.nbest);
      finals.appendChild(line);
      partial.textContent = "";
    } else if (message.type === "speech_end") {
      setStatus("done");
    }
  };
  socket.onerror = () => setStatus("connection error", true);
  socket.onclose = () => {
    if (statusLine.textContent === "listening" || statusLine.textContent === "finishing") setStatus("closed");
    stopAudio();
    socket = null;
    startButton.disabled = false;
    stopButton.disabled = true;
  };
}

function stopAudio() {
  if (node) node.port.onmessage = null;
  if (media) media.getTracks().forEach((t) => t.stop());
  if (context) context.close();
  media = null;
  context = null;
  node = null;
}

function stop() {
  stopButton.disabled = true;
  sendPending(true);
  stopAudio();
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify({ signal: "end" }));
    setStatus("finishing");
  }
}

startButton.onclick = start;
stopButton.onclick = stop;
if (query.get("autostart") === "1") start();
</script>
</body>
</html>
)HTML";

}  // namespace

std::string asr_web_page(int sample_rate) {
  std::string page = kPage;
  const std::string key = "__SAMPLE_RATE__";
  page.replace(page.find(key), key.size(), std::to_string(sample_rate));
  return page;
}

}  // namespace moekit
