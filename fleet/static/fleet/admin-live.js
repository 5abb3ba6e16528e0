// Keeps the admin's node and deployment lists live: the dashboard's socket updates the cells
// of rows already on the page (found by the action checkbox's object id).
(function () {
  "use strict";
  const kind = document.currentScript.dataset.kind;
  const fields = {
    node: (n) => ({ state: n.state, inflight: n.inflight, queued: n.queued, slots: n.slots, last_heartbeat: n.last_heartbeat }),
  };

  function row(id) {
    const box = document.querySelector('#result_list input[name="_selected_action"][value="' + id + '"]');
    return box ? box.closest("tr") : null;
  }

  function set(tr, field, value) {
    const cell = tr && tr.querySelector("td.field-" + field);
    if (cell) cell.textContent = value === null || value === undefined ? "" : String(value);
  }

  function onNode(n) {
    if (kind === "node") {
      const tr = row(n.id);
      Object.entries(fields.node(n)).forEach(([f, v]) => set(tr, f, v));
    } else {
      n.deployments.forEach((d) => {
        const tr = row(d.id);
        set(tr, "state", d.state);
        set(tr, "progress", d.progress);
        set(tr, "updated_at", d.updated_at);
        set(tr, "error", d.error);
      });
    }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + "/ws/dashboard");
    socket.onmessage = (message) => {
      const event = JSON.parse(message.data);
      if (event.type === "snapshot") event.nodes.forEach(onNode);
      else if (event.type === "node") onNode(event.node);
    };
    socket.onclose = () => setTimeout(connect, 2000); // reconnect; not a poll
  }
  document.addEventListener("DOMContentLoaded", connect);
})();
