"use strict";
// Reads the token from the page URL and sends it with every request; data arrives as
// Server-Sent Events replaying the job's event log from the start, then live.
(function () {
  const params = new URLSearchParams(window.location.search);
  const token = params.get("token") || "";
  const q = (path) => path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
  let source = null;
  let state = null;
  let failures = 0;
  const EMPTY = {
    curves: "waiting for the first epoch…",
    gradients: "no layer statistics: train with --debug (%%neural_run --debug) to see them",
    activations: "no layer statistics: train with --debug to see them",
    steps: "no step timings: train with --debug to see them",
  };
  const CONFIG = { displayModeBar: false, responsive: true };

  function placeholder(id) {
    Plotly.purge(id);
    document.getElementById(id).innerHTML = '<p class="empty">' + EMPTY[id] + "</p>";
  }

  function clearPlaceholder(id) {
    const empty = document.getElementById(id).querySelector("p.empty");
    if (empty) empty.remove();
  }

  function reset() {
    state = { history: [], stats: null, anomalies: [], steps: [], status: "RUNNING" };
    Object.keys(EMPTY).forEach(placeholder);
    document.getElementById("anomalies").innerHTML = '<li class="none">none so far</li>';
  }

  function stopped() {
    // the kernel stopped the dashboard (or exited): say so instead of retrying forever
    if (source) source.close();
    setStatus("stopped", "#888");
    document.getElementById("stopped").hidden = false;
  }

  function axis(title, extra) {
    return Object.assign({ title: { text: title, standoff: 6 }, automargin: true, gridcolor: "#eee" }, extra || {});
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
    clearPlaceholder("curves");
    Plotly.react("curves", traces, {
      margin: { t: 10, r: 10, b: 40, l: 55 }, height: 260,
      xaxis: axis("epoch", { dtick: state.history.length > 12 ? undefined : 1 }),
      yaxis: axis("value"), legend: { orientation: "h", y: -0.3 },
    }, CONFIG);
  }

  function logRange(values) {
    // bars on a log axis start at its bottom: put the bottom a decade below the smallest
    // value, so the smallest bar is still a visible bar
    const positive = values.filter((v) => v > 0);
    if (!positive.length) return undefined;
    const low = Math.floor(Math.log10(Math.min(...positive))) - 1;
    const high = Math.ceil(Math.log10(Math.max(...positive)));
    return [low, Math.max(high, low + 2)];
  }

  function drawStats() {
    const layers = state.stats.layers.filter((l) => l.grad_norm !== undefined || l.mean !== undefined);
    const names = layers.map((l) => l.name);
    // only layers with weights have a gradient norm: the others get no bar at all
    const weighted = layers.filter((l) => typeof l.grad_norm === "number");
    const norms = weighted.map((l) => Math.max(l.grad_norm, 1e-12));
    clearPlaceholder("gradients");
    clearPlaceholder("activations");
    Plotly.react("gradients", [{
      type: "bar", x: weighted.map((l) => l.name), y: norms, name: "gradient norm",
      text: weighted.map((l) => l.grad_norm.toExponential(1)), textposition: "outside",
      cliponaxis: false,
    }], {
      margin: { t: 20, r: 10, b: 60, l: 60 }, height: 260,
      xaxis: axis("layer"), yaxis: axis("gradient norm (log scale)", { type: "log", range: logRange(norms), exponentformat: "power" }),
    }, CONFIG);
    Plotly.react("activations", [
      { type: "bar", x: names, y: layers.map((l) => l.mean || 0), name: "mean",
        error_y: { type: "data", array: layers.map((l) => l.std || 0), visible: true } },
      { type: "bar", x: names, y: layers.map((l) => (l.dead_fraction === undefined ? null : l.dead_fraction)), name: "dead ReLU fraction" },
    ], {
      margin: { t: 10, r: 10, b: 70, l: 55 }, height: 280, barmode: "group",
      xaxis: axis("layer", { title: { text: "layer", standoff: 14 } }),
      yaxis: axis("activation / fraction"), legend: { orientation: "h", y: -0.55 },
    }, CONFIG);
  }

  function drawSteps() {
    clearPlaceholder("steps");
    // both axes start at zero: a memory curve that moves by half a MiB stays a flat line
    // instead of being magnified into big jumps
    Plotly.react("steps", [
      { x: state.steps.map((s) => s.step), y: state.steps.map((s) => s.step_time * 1000), name: "ms / step", mode: "lines" },
      { x: state.steps.map((s) => s.step), y: state.steps.map((s) => s.peak_memory_bytes / 1048576), name: "peak memory (MiB)", yaxis: "y2", mode: "lines" },
    ], {
      margin: { t: 10, r: 60, b: 40, l: 55 }, height: 220,
      xaxis: axis("step"), yaxis: axis("ms / step", { rangemode: "tozero" }),
      yaxis2: axis("peak memory (MiB)", { overlaying: "y", side: "right", rangemode: "tozero", showgrid: false, tickmode: "auto", nticks: 5 }),
      legend: { orientation: "h", y: -0.35 },
    }, CONFIG);
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
    const graph = document.getElementById("graph-img");
    graph.hidden = false;
    document.getElementById("graph-missing").hidden = true;
    graph.onerror = () => {
      graph.hidden = true;
      document.getElementById("graph-missing").hidden = false;
    };
    graph.src = q("api/jobs/" + jobId + "/graph.svg");
    setStatus("live", "#1f77b4");
    source = new EventSource(q("api/jobs/" + jobId + "/events"));
    source.onopen = () => { failures = 0; };
    source.onmessage = (message) => onEvent(JSON.parse(message.data));
    source.addEventListener("end", (message) => {
      const status = JSON.parse(message.data);
      setStatus(status, status === "SUCCEEDED" ? "#2ca02c" : "#d62728");
      source.close();
    });
    source.onerror = () => {
      // EventSource retries by itself; find out whether the server is still there
      setStatus("reconnecting", "#ff7f0e");
      checkServer();
    };
  }

  function checkServer() {
    if (!document.getElementById("stopped").hidden) return;
    fetch(q("api/jobs"), { cache: "no-store" })
      .then((r) => { if (!r.ok) throw new Error(r.status); failures = 0; })
      .catch(() => { failures += 1; if (failures >= 2) stopped(); });
  }

  // also after a job has ended (no stream open): notice when the kernel stops the server
  setInterval(checkServer, 5000);

  fetch(q("api/jobs")).then((r) => r.json()).catch(() => { stopped(); return null; }).then((data) => {
    if (data === null) return;
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
