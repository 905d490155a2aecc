"use strict";
// Reads the token from the page URL and sends it with every request; data arrives as
// Server-Sent Events replaying the job's event log from the start, then live.
(function () {
  const params = new URLSearchParams(window.location.search);
  const token = params.get("token") || "";
  const q = (path) => path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
  let source = null;
  let state = null;

  function reset() {
    state = { history: [], stats: null, anomalies: [], steps: [], status: "RUNNING" };
    ["curves", "gradients", "activations", "steps"].forEach((id) => Plotly.purge(id));
    document.getElementById("anomalies").innerHTML = '<li class="none">none so far</li>';
  }

  function setStatus(text, color) {
    const el = document.getElementById("status");
    el.textContent = text;
    el.style.background = color;
  }

  function drawCurves() {
    const names = new Set();
    state.history.forEach((h) => Object.keys(h).forEach((k) => k !== "epoch" && k !== "lr" && names.add(k)));
    const traces = [...names].map((name) => ({
      x: state.history.map((h) => h.epoch),
      y: state.history.map((h) => h[name]),
      name: name,
      mode: "lines+markers",
      line: { dash: name.startsWith("val_") ? "dash" : "solid" },
    }));
    Plotly.react("curves", traces, { margin: { t: 10, r: 10, b: 30, l: 40 }, height: 240, xaxis: { title: "epoch" } }, { displayModeBar: false });
  }

  function drawStats() {
    const layers = state.stats.layers.filter((l) => l.grad_norm !== undefined || l.mean !== undefined);
    const names = layers.map((l) => l.name);
    Plotly.react("gradients", [{ type: "bar", x: names, y: layers.map((l) => l.grad_norm || 0), name: "gradient norm" }],
      { margin: { t: 10, r: 10, b: 60, l: 50 }, height: 240, yaxis: { type: "log" } }, { displayModeBar: false });
    Plotly.react("activations", [
      { type: "bar", x: names, y: layers.map((l) => l.mean || 0), name: "mean",
        error_y: { type: "data", array: layers.map((l) => l.std || 0), visible: true } },
      { type: "bar", x: names, y: layers.map((l) => (l.dead_fraction === undefined ? null : l.dead_fraction)), name: "dead ReLU fraction" },
    ], { margin: { t: 10, r: 10, b: 60, l: 50 }, height: 240, barmode: "group" }, { displayModeBar: false });
  }

  function drawSteps() {
    Plotly.react("steps", [
      { x: state.steps.map((s) => s.step), y: state.steps.map((s) => s.step_time * 1000), name: "ms / step", mode: "lines" },
      { x: state.steps.map((s) => s.step), y: state.steps.map((s) => s.peak_memory_bytes / 1048576), name: "peak MiB", yaxis: "y2", mode: "lines" },
    ], { margin: { t: 10, r: 40, b: 30, l: 40 }, height: 180, yaxis2: { overlaying: "y", side: "right" } }, { displayModeBar: false });
  }

  function addAnomalies(items) {
    const list = document.getElementById("anomalies");
    items.forEach((a) => {
      const none = list.querySelector(".none");
      if (none) none.remove();
      const li = document.createElement("li");
      li.textContent = (a.step !== undefined ? "step " + a.step + ": " : "") + (a.message || a.kind);
      list.appendChild(li);
    });
  }

  function onEvent(event) {
    if (event.event === "start") {
      document.getElementById("info").textContent =
        (event.model || "") + " on " + (event.device_name || "?") + " · " + (event.params || 0).toLocaleString() + " params";
    } else if (event.event === "epoch") {
      state.history.push(Object.assign({ epoch: event.epoch }, event.metrics));
      drawCurves();
    } else if (event.event === "layer_stats") {
      if (event.layers && event.layers.length) { state.stats = event; drawStats(); }
      if (event.step_time !== undefined) { state.steps.push(event); drawSteps(); }
      if (event.anomalies && event.anomalies.length) addAnomalies(event.anomalies);
    } else if (event.event === "error") {
      addAnomalies([{ message: event.type + ": " + event.message }]);
    }
  }

  function follow(jobId) {
    if (source) source.close();
    reset();
    document.getElementById("graph-img").src = q("api/jobs/" + jobId + "/graph.svg");
    setStatus("live", "#1f77b4");
    source = new EventSource(q("api/jobs/" + jobId + "/events"));
    source.onmessage = (message) => onEvent(JSON.parse(message.data));
    source.addEventListener("end", (message) => {
      const status = JSON.parse(message.data);
      setStatus(status, status === "SUCCEEDED" ? "#2ca02c" : "#d62728");
      source.close();
    });
    source.onerror = () => setStatus("reconnecting", "#ff7f0e");
  }

  fetch(q("api/jobs")).then((r) => r.json()).then((data) => {
    const select = document.getElementById("job");
    data.jobs.forEach((job) => {
      const option = document.createElement("option");
      option.value = job.id;
      option.textContent = job.id + " " + job.name + " (" + job.status + ")";
      select.appendChild(option);
    });
    const wanted = params.get("job") || data.default;
    if (wanted) { select.value = wanted; follow(wanted); } else { setStatus("no jobs yet", "#888"); }
    select.addEventListener("change", () => follow(select.value));
  });
})();
