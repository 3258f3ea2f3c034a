// A Mapleverse agent in a browser tab: MQTT over WebSocket with mqtt.js, and the topic contract
// of docs/agents.md. The same agent as paho_agent.py: it joins by saying `ready` (retained) on
// its state topic, answers each observation on `act` with the observation's tick, shows the
// errors the scheduler sends back, and says `offline` when it leaves.
//
// mqtt.js comes from a CDN, pinned and checked (Subresource Integrity). To run offline, serve a
// copy of your own next to the page and open `browser_agent.html?mqttjs=/path/mqtt.min.js`.
// `?url=ws://host:9001&agent=scout-7&root=mv` fill the form; the password is typed (never put
// it in a URL: it would stay in the history).
"use strict";

const MQTTJS = {
  src: "https://unpkg.com/mqtt@5.16.0/dist/mqtt.min.js",
  integrity: "sha384-9WWboT9UtuPFRlOLq4FygQkcJxzYcpz8SXGkNyCEXM+44n14xzjNlrRKYZwuF/A6",
};
const LOG_LINES = 50;

const query = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
let client = null; // the mqtt.js client while connected
let leave = () => {}; // says offline and disconnects

function loadMqtt() {
  return new Promise((resolve, reject) => {
    const script = document.createElement("script");
    const local = query.get("mqttjs") && new URL(query.get("mqttjs"), location.href);
    if (local && /^https?:$/.test(local.protocol) && local.origin === location.origin) {
      script.src = local.href; // a copy on this page's own server only
    } else {
      script.src = MQTTJS.src;
      script.integrity = MQTTJS.integrity;
      script.crossOrigin = "anonymous";
    }
    script.onload = () => resolve(window.mqtt);
    script.onerror = () => reject(new Error(`cannot load mqtt.js from ${script.src}`));
    document.head.append(script);
  });
}
const mqttLoaded = loadMqtt();

// `data` in the Mapleverse envelope (publishing `data` alone would be accepted too).
function envelope(sender, data, corr) {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  const id = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  const message = { id, sender, ts: Date.now() / 1000, v: 1 };
  if (corr) message.corr = corr; // the id of the message this answers
  message.data = data;
  return JSON.stringify(message);
}

// Walks to the nearest entity in sight and greets it once; with nobody near, wanders.
class Brain {
  constructor() {
    this.heading = Math.random() * 2 * Math.PI;
    this.greeted = new Set();
  }

  decide(observation) {
    const tick = observation.tick;
    const limit = observation.environment?.max_speed ?? 2;
    const here = observation.location; // null until the world has placed the agent
    const seen = observation.visible ?? []; // nearest first: id, x, y, swarm, distance
    if (here && seen.length) {
      const near = seen[0];
      if (near.distance < 3 && !this.greeted.has(near.id)) {
        this.greeted.add(near.id);
        return { action: "say", tick, params: { text: `hello ${near.id}` },
                 reasoning: "a new face", confidence: 0.9 };
      }
      if (near.distance >= 3) {
        this.heading = Math.atan2(near.y - here.y, near.x - here.x);
        return this.move(tick, Math.min(2, limit), `walking over to ${near.id}`);
      }
    }
    if (Math.random() < 0.2) this.heading = Math.random() * 2 * Math.PI; // now and then
    return this.move(tick, Math.min(1, limit), "wandering");
  }

  move(tick, speed, reasoning) {
    const params = { dx: Math.cos(this.heading), dy: Math.sin(this.heading), speed };
    return { action: "move", tick, params, reasoning, confidence: 0.8 };
  }
}

// What the page shows; each also fires a `mapleverse:KIND` event on `document` (with the
// payload as `detail`) for a page of your own to hook into: status, obs, act, error.
function show(kind, text, detail) {
  if (kind === "status") {
    $("status").textContent = text;
  } else if (kind === "obs") {
    $("observation").textContent = `${text}\n\n${JSON.stringify(detail, null, 2)}`;
  } else {
    const line = document.createElement("li");
    line.className = kind;
    line.textContent = text;
    $("log").prepend(line);
    while ($("log").children.length > LOG_LINES) $("log").lastChild.remove();
  }
  document.dispatchEvent(new CustomEvent(`mapleverse:${kind}`, { detail: detail ?? text }));
}

function describe(obs) {
  const at = obs.location;
  const where = at ? `at (${at.x.toFixed(1)}, ${at.y.toFixed(1)}) in ${at.region}` : "not placed";
  return `tick ${obs.tick}: ${where}, ${obs.visible?.length ?? 0} in sight, ` +
    `answer within ${obs.deadline} s`;
}

async function connect(event) {
  event.preventDefault();
  const [url, agent, root] = [$("url").value, $("agent").value, $("root").value];
  const topic = (name) => `${root}/agent/${agent}/${name}`;
  let mqtt;
  try {
    mqtt = await mqttLoaded;
  } catch (err) {
    return show("status", err.message);
  }
  const brain = new Brain();
  const offline = () => envelope(agent, { status: "offline" });
  client = mqtt.connect(url, {
    protocolVersion: 4, // MQTT 3.1.1: what every Mapleverse broker speaks
    clientId: agent, // = the username: the embedded broker refuses any other
    username: agent,
    password: $("password").value,
    clean: true,
    reconnectPeriod: 2000,
    // Should the connection die (the tab closed, the network gone): offline, retained.
    will: { topic: topic("state"), payload: offline(), qos: 1, retain: true },
  });
  setConnected(true);
  show("status", `connecting to ${url} as ${agent}`);

  client.on("connect", () => {
    client.subscribe([topic("obs"), topic("error")], { qos: 1 }, (err, granted) => {
      if (err || granted.some((g) => g.qos === 128)) {
        return show("status", `subscription refused: ${err?.message ?? "not authorized"}`);
      }
      // Listening now: join the world by saying so, retained.
      client.publish(topic("state"), envelope(agent, { status: "ready" }), { qos: 1, retain: true });
      show("status", `ready: ${agent} on ${url}, listening on ${topic("obs")}`);
    });
  });
  client.on("message", (name, payload) => {
    let message;
    try {
      message = JSON.parse(payload.toString());
    } catch {
      return; // not JSON: bad input never crashes the agent
    }
    const data = message?.data ?? message; // enveloped, or bare
    if (typeof data !== "object" || data === null || Array.isArray(data)) return;
    if (name === topic("error")) { // an answer was not applied; `applied` says what was instead
      return show("error", `error at tick ${data.tick}: ${data.code}: ${data.reason} ` +
        `(${data.applied} applied)`, data);
    }
    show("obs", describe(data), data);
    const action = brain.decide(data);
    client.publish(topic("act"), envelope(agent, action, message.id), { qos: 1 });
    show("act", `tick ${data.tick} -> ${action.action} (${action.reasoning})`, action);
  });
  client.on("error", (err) => {
    if (typeof err.code !== "number") return show("status", `${err.message}, retrying`);
    // Refused (e.g. "Not authorized": a wrong password, or client id != username): stop.
    show("status", `the broker refused the connection: ${err.message}`);
    client.end(true);
    setConnected(false);
  });
  client.on("reconnect", () => show("status", `connection lost, reconnecting to ${url}`));

  // Leaving on purpose: a clean disconnect sends no Will, so publish `offline` ourselves.
  leave = () => {
    const leaving = client;
    leaving.publish(topic("state"), offline(), { qos: 1, retain: true }, () => {
      leaving.end(false, {}, () => show("status", `${agent}: offline`));
    });
    setConnected(false);
  };
}

function setConnected(connected) {
  $("connect").disabled = connected;
  $("leave").disabled = !connected;
}

for (const name of ["url", "agent", "root"]) {
  if (query.has(name)) $(name).value = query.get(name);
}
if (!query.has("url")) $("url").value = `ws://${location.hostname || "localhost"}:9001`;
$("login").addEventListener("submit", connect);
$("leave").addEventListener("click", () => leave());
