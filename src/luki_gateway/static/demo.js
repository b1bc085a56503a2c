// LUKi gateway demo: chat turns and channel subscriptions over one WebSocket.
// Plain JavaScript, no build step; loaded as a file so the page's CSP needs no inline script.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const ui = {
    state: $("state"), who: $("who"), key: $("key"), keyForm: $("key-form"),
    connect: $("connect"), disconnect: $("disconnect"), log: $("log"),
    chatForm: $("chat-form"), message: $("message"), send: $("send"), cancel: $("cancel"),
    meta: $("turn-meta"), subForm: $("sub-form"), channel: $("channel"),
    subscribe: $("subscribe"), subs: $("subs"), events: $("events"), curl: $("curl"),
  };

  let ws = null;
  let wanted = false;          // the user wants to be connected (reconnect on drops)
  let retry = 0;
  let counter = 0;
  let resuming = false;
  let refused = false;         // the gateway's error already said why the key was refused
  // Turn ids unique to this tab: a reconnect may resume a turn by the id it started with.
  const tab = Math.random().toString(36).slice(2, 8);
  const turns = new Map();     // client id -> {el, turnId, lastSeq, done}
  const channels = new Map();  // channel -> id of the last event shown ("" before any)

  function setState(state) {
    ui.state.textContent = state;
    ui.state.className = "badge state-" + state;
    const live = state === "connected" || state === "resumed";
    ui.message.disabled = !live;
    ui.send.disabled = !live;
    ui.channel.disabled = !live;
    ui.subscribe.disabled = !live;
    ui.connect.disabled = wanted;
    ui.disconnect.disabled = !wanted;
    updateCancel();
  }

  function updateCancel() {
    const running = [...turns.values()].some((t) => !t.done);
    ui.cancel.disabled = !running || !ws || ws.readyState !== WebSocket.OPEN;
  }

  function clearEmpty(box) {
    const empty = box.querySelector(".empty");
    if (empty) empty.remove();
  }

  function bubble(kind, text) {
    clearEmpty(ui.log);
    const el = document.createElement("div");
    el.className = "msg " + kind;
    el.textContent = text;
    ui.log.appendChild(el);
    ui.log.scrollTop = ui.log.scrollHeight;
    return el;
  }

  function wsUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + location.host + "/v1/ws";
  }

  function send(msg) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
  }

  function connect() {
    const key = ui.key.value.trim();
    if (!key) { ui.key.focus(); return; }
    localStorage.setItem("luki-demo-key", key);
    wanted = true;
    open(key);
  }

  function open(key) {
    refused = false;
    setState(retry ? "reconnecting" : "connecting");
    const sock = new WebSocket(wsUrl());
    ws = sock;
    sock.onopen = () => send({ type: "auth", token: key });
    sock.onmessage = (ev) => { if (ws === sock) handle(JSON.parse(ev.data)); };
    sock.onclose = (ev) => {
      if (ws !== sock) return;   // replaced (a new key): that socket's state is not ours
      ws = null;
      if (!wanted) { setState("disconnected"); return; }
      if (ev.code === 4401) {
        wanted = false;
        setState("disconnected");
        if (!refused) bubble("error", "The gateway refused the key (" + (ev.reason || "unauthenticated") + ").");
        return;
      }
      retry += 1;
      setState("reconnecting");
      const delay = Math.min(8000, 300 * 2 ** Math.min(retry, 5));
      setTimeout(() => { if (wanted) open(key); }, delay);
    };
  }

  function disconnect() {
    wanted = false;
    if (ws) ws.close(1000, "bye");
  }

  function handle(msg) {
    switch (msg.type) {
      case "welcome": return welcome(msg);
      case "token": return onToken(msg);
      case "tool_call": return onTool(msg);
      case "done": return onEnd(msg, null);
      case "error": return msg.id && turns.has(msg.id) ? onEnd(msg, msg.error) : showError(msg);
      case "subscribed": return onSubscribed(msg);
      case "event": return onEvent(msg);
      case "gap": return notice(msg.channel, "some events were missed (gap)");
      case "reset":
        if (channels.has(msg.channel)) channels.set(msg.channel, "");   // that position is gone
        return notice(msg.channel, "history is gone: events before now are missing (reset)");
      default: return undefined;
    }
  }

  function welcome(msg) {
    const p = msg.principal || {};
    ui.who.textContent = p.subject ? "as " + p.subject : "";
    const reconnecting = retry > 0;
    retry = 0;
    resuming = false;
    // Pick up where each unfinished turn left off (one dropped before its first token is
    // found by the id it was started with), and re-join every channel after its last event.
    for (const [id, turn] of turns) {
      if (!turn.done) {
        send(turn.turnId
          ? { type: "resume", id: id, turn_id: turn.turnId, last_seq: turn.lastSeq }
          : { type: "resume", id: id });
        resuming = true;
      }
    }
    for (const [ch, lastId] of channels) {
      send(lastId ? { type: "subscribe", channel: ch, last_id: lastId } : { type: "subscribe", channel: ch });
    }
    setState(reconnecting && resuming ? "resumed" : "connected");
  }

  function turnFor(msg) {
    const turn = turns.get(msg.id);
    if (!turn) return null;
    if (msg.seq && msg.seq <= turn.lastSeq) return null;   // already shown
    if (msg.seq) turn.lastSeq = msg.seq;
    if (msg.turn_id) turn.turnId = msg.turn_id;
    return turn;
  }

  function onToken(msg) {
    const turn = turnFor(msg);
    if (!turn) return;
    turn.text.textContent += msg.text;
    ui.log.scrollTop = ui.log.scrollHeight;
  }

  function onTool(msg) {
    const turn = turnFor(msg);
    if (!turn) return;
    const tool = document.createElement("span");
    tool.className = "tool";
    const call = msg.tool_call || {};
    tool.textContent = "tool call → " + call.name + "(" + JSON.stringify(call.arguments) + ")";
    turn.el.appendChild(tool);
  }

  function onEnd(msg, error) {
    const turn = turnFor(msg) || turns.get(msg.id);
    if (!turn || turn.done) return;
    turn.done = true;
    turn.el.classList.remove("streaming");
    const end = document.createElement("span");
    end.className = "end";
    if (error && error.code === "NOT_FOUND" && !turn.turnId) {
      end.textContent = "lost with the connection before it started: send it again";
      turn.el.classList.add("error");
    } else if (error) {
      end.textContent = "error: " + error.code + " — " + error.message;
      turn.el.classList.add("error");
    } else {
      const u = msg.usage || {};
      end.textContent = msg.finish_reason + " · " + (u.output_tokens ?? "?") + " tokens";
    }
    turn.el.appendChild(end);
    ui.meta.textContent = "turn " + (turn.turnId || "-") + (msg.trace_id ? " · trace " + msg.trace_id : "");
    if (ui.state.textContent === "resumed" && ![...turns.values()].some((t) => !t.done)) {
      setState("connected");
    }
    updateCancel();
  }

  function showError(msg) {
    const e = msg.error || {};
    if (e.code === "UNAUTHENTICATED") refused = true;
    if (e.details && e.details.channel) return notice(e.details.channel, (e.code || "ERROR") + ": " + (e.message || ""));
    bubble("error", (e.code || "ERROR") + ": " + (e.message || ""));
  }

  function ask(text) {
    const id = "c-" + tab + "-" + (++counter);
    bubble("user", text);
    const el = bubble("agent streaming", "");
    const textNode = document.createElement("span");
    el.appendChild(textNode);
    turns.set(id, { el: el, text: textNode, turnId: null, lastSeq: 0, done: false });
    send({ type: "chat", id: id, message: text });
    updateCancel();
  }

  function cancelRunning() {
    for (const [id, turn] of turns) if (!turn.done) send({ type: "cancel", id: id });
  }

  function onSubscribed(msg) {
    if (channels.has(msg.channel) && ui.subs.querySelector('[data-ch="' + CSS.escape(msg.channel) + '"]')) return;
    channels.set(msg.channel, channels.get(msg.channel) || "");
    const li = document.createElement("li");
    li.dataset.ch = msg.channel;
    li.textContent = msg.channel;
    ui.subs.appendChild(li);
    ui.curl.textContent = curlFor(msg.channel);
  }

  function onEvent(msg) {
    if (channels.has(msg.channel)) channels.set(msg.channel, msg.id);
    clearEmpty(ui.events);
    const el = document.createElement("div");
    el.className = "event";
    const ch = document.createElement("span");
    ch.className = "ch";
    ch.textContent = msg.channel + " · " + msg.id;
    const body = document.createElement("code");
    body.textContent = typeof msg.data === "string" ? msg.data : JSON.stringify(msg.data);
    el.append(ch, body);
    ui.events.prepend(el);
  }

  function notice(channel, text) {
    clearEmpty(ui.events);
    const el = document.createElement("div");
    el.className = "event notice";
    el.textContent = (channel ? channel + " · " : "") + text;
    ui.events.prepend(el);
  }

  function curlFor(channel) {
    return "curl -X POST " + location.origin + "/v1/events/publish \\\n" +
      "  -H 'Authorization: Bearer <key with events:publish>' \\\n" +
      "  -H 'Content-Type: application/json' \\\n" +
      "  -d '{\"channel\": \"" + channel + "\", \"data\": {\"hello\": \"world\"}}'";
  }

  ui.keyForm.addEventListener("submit", (ev) => { ev.preventDefault(); connect(); });
  ui.disconnect.addEventListener("click", disconnect);
  ui.chatForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = ui.message.value.trim();
    if (!text) return;
    ui.message.value = "";
    ask(text);
  });
  ui.cancel.addEventListener("click", cancelRunning);
  ui.subForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const ch = ui.channel.value.trim();
    if (ch && !channels.has(ch)) send({ type: "subscribe", channel: ch });
  });

  // A key in the URL fragment (never sent to the server) or the last one used.
  function keyFromHash() {
    const key = new URLSearchParams(location.hash.slice(1)).get("key");
    if (key) history.replaceState(null, "", location.pathname);
    return key;
  }
  window.addEventListener("hashchange", () => {
    const key = keyFromHash();
    if (!key) return;
    ui.key.value = key;
    if (ws) { wanted = false; ws.close(1000, "new key"); }
    connect();
  });
  const fromHash = keyFromHash();
  ui.key.value = fromHash || localStorage.getItem("luki-demo-key") || "";
  ui.curl.textContent = curlFor(ui.channel.value);
  setState("disconnected");
  if (ui.key.value && fromHash) connect();
})();
