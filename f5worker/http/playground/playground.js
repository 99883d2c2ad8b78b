"use strict";
// The playground: lists the voices, streams POST /v1/audio/speech as 16-bit PCM and plays each piece as it
// arrives (Web Audio), then offers the whole audio as a WAV file. No build step, no dependency.

const SAMPLE_RATE = 24000;
const $ = (id) => document.getElementById(id);
// What the page did, for the browser test (tests/test_http_playground.py) and for curious users.
const playground = { context: null, controller: null, sources: [], nextTime: 0, pieces: 0, samples: 0,
                     startedAt: null, firstAudioAt: null, doneAt: null, seed: null };
window.playground = playground;

function requestHeaders() {
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

function setState(state, message) {
  document.body.dataset.state = state;
  $("status").textContent = message;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  setState("error", "");
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return body.error?.message ?? JSON.stringify(body);
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

async function loadVoices() {
  const response = await fetch("v1/audio/voices", { headers: requestHeaders() });
  if (!response.ok) {
    $("status").textContent = `Voices: ${await errorMessage(response)}`;
    return;
  }
  const { voices } = await response.json();
  $("voices").replaceChildren(...voices.map((voice) => {
    const option = document.createElement("option");
    option.value = voice.id;
    option.label = voice.error ? `${voice.id} (unusable: ${voice.error})` : voice.id;
    return option;
  }));
  $("status").textContent = `${voices.length} voice${voices.length === 1 ? "" : "s"} available.`;
}

function samplesOf(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const samples = new Float32Array(bytes.byteLength / 2);
  for (let i = 0; i < samples.length; i += 1) samples[i] = view.getInt16(2 * i, true) / 32768;
  return samples;
}

function play(samples) {
  const context = playground.context;
  const buffer = context.createBuffer(1, samples.length, SAMPLE_RATE);
  buffer.copyToChannel(samples, 0);
  const source = context.createBufferSource();
  source.buffer = buffer;
  source.connect(context.destination);
  playground.nextTime = Math.max(playground.nextTime, context.currentTime + 0.05);
  source.start(playground.nextTime);
  playground.nextTime += buffer.duration;
  playground.sources.push(source);
}

function wavFile(chunks, length) {
  const header = new DataView(new ArrayBuffer(44));
  const text = (offset, value) => [...value].forEach((c, i) => header.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF"); header.setUint32(4, 36 + 2 * length, true); text(8, "WAVE");
  text(12, "fmt "); header.setUint32(16, 16, true); header.setUint16(20, 1, true); header.setUint16(22, 1, true);
  header.setUint32(24, SAMPLE_RATE, true); header.setUint32(28, 2 * SAMPLE_RATE, true);
  header.setUint16(32, 2, true); header.setUint16(34, 16, true);
  text(36, "data"); header.setUint32(40, 2 * length, true);
  return new Blob([header, ...chunks], { type: "audio/wav" });
}

function stop() {
  playground.controller?.abort();
  playground.sources.forEach((source) => source.stop());
  playground.sources = [];
  playground.nextTime = 0;
}

function requestBody() {
  const body = { model: "f5-tts", input: $("text").value, voice: $("voice").value.trim(), response_format: "pcm",
                 speed: Number($("speed").value), nfe_step: Number($("nfe-step").value) };
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  return body;
}

async function speak(event) {
  event.preventDefault();
  stop();
  $("error").hidden = true;
  $("result").hidden = true;
  $("speak").disabled = true;
  $("stop").disabled = false;
  playground.context ??= new AudioContext({ sampleRate: SAMPLE_RATE });
  await playground.context.resume();
  Object.assign(playground, { controller: new AbortController(), pieces: 0, samples: 0, seed: null,
                              startedAt: performance.now(), firstAudioAt: null, doneAt: null });
  setState("loading", "Synthesizing…");
  try {
    const response = await fetch("v1/audio/speech", { method: "POST", headers: requestHeaders(),
                                                      body: JSON.stringify(requestBody()),
                                                      signal: playground.controller.signal });
    if (!response.ok) {
      showError(await errorMessage(response));
      return;
    }
    playground.seed = response.headers.get("X-Seed");
    const reader = response.body.getReader();
    const chunks = [];
    let carry = new Uint8Array(0);  // an odd byte waits for the next piece: samples are 2 bytes
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      const bytes = new Uint8Array(carry.length + value.length);
      bytes.set(carry);
      bytes.set(value, carry.length);
      const even = bytes.length - (bytes.length % 2);
      carry = bytes.slice(even);
      if (even === 0) continue;
      const piece = bytes.slice(0, even);
      chunks.push(piece);
      playground.pieces += 1;
      playground.samples += even / 2;
      playground.firstAudioAt ??= performance.now();
      play(samplesOf(piece));
      setState("playing", `Playing: ${(playground.samples / SAMPLE_RATE).toFixed(1)} s received…`);
    }
    playground.doneAt = performance.now();
    const url = URL.createObjectURL(wavFile(chunks, playground.samples));
    $("player").src = url;
    $("download").href = url;
    $("download").download = `speech-${playground.seed}.wav`;
    $("result").hidden = false;
    const firstAfter = ((playground.firstAudioAt - playground.startedAt) / 1000).toFixed(2);
    setState("done", `Done: ${(playground.samples / SAMPLE_RATE).toFixed(1)} s of audio, seed ${playground.seed}; ` +
                     `the first audio played ${firstAfter} s after the request.`);
  } catch (err) {
    if (err.name === "AbortError") setState("idle", "Stopped.");
    else showError(`The stream broke off: ${err.message}`);
  } finally {
    $("speak").disabled = false;
    $("stop").disabled = true;
  }
}

$("speak-form").addEventListener("submit", speak);
$("stop").addEventListener("click", stop);
$("api-key").addEventListener("change", loadVoices);
loadVoices();
