// guard review page: plain JS, no build step. Every string that comes from the API (and so,
// possibly, from an agent) is put in the page as text nodes via el(), never parsed as markup.
"use strict";

const TOKEN_KEY = "guard.token";
const main = document.getElementById("main");

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else node.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

// a person signed in through guard's sign-in (/login): the session cookie authenticates, and the
// session's CSRF token goes with every request that changes something
let signedIn = null;

async function loadSession() {
  try {
    const resp = await fetch("/login/session", { credentials: "same-origin", cache: "no-store" });
    signedIn = resp.ok ? await resp.json() : null;
  } catch (e) {
    signedIn = null;
  }
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function api(path, options) {
  const t = token();
  if (!t && !signedIn) throw new Error("sign in or paste a token first");
  const headers = { Accept: "application/json" };
  if (t) headers.Authorization = "Bearer " + t;
  else headers["X-CSRF-Token"] = signedIn.csrf;
  if (options && options.body) headers["Content-Type"] = "application/json";
  const credentials = t ? "omit" : "same-origin";
  const resp = await fetch(path, { ...options, headers, credentials, cache: "no-store" });
  const type = resp.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await resp.json() : await resp.text();
  if (!resp.ok) {
    const why = data && data.code ? data.code + ": " + data.detail : "HTTP " + resp.status;
    throw new Error(why);
  }
  return data;
}

function when(ts) {
  if (typeof ts !== "number") return "";
  return new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 23);
}

function badge(value, cls) {
  return el("span", { class: "badge " + String(cls || value).replace(/[^a-z_]/gi, "") }, value);
}

function whoAmI() {
  const who = document.getElementById("who");
  const t = token();
  who.textContent = "";
  document.getElementById("sign-in").hidden = Boolean(signedIn);
  document.getElementById("sign-out").hidden = !signedIn;
  if (!t && signedIn) {
    who.textContent = "signed in as " + (signedIn.name || signedIn.sub) + (signedIn.roles.length ? " (" + signedIn.roles.join(", ") + ")" : "");
    return;
  }
  if (!t) return;
  try {
    const part = t.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part));
    const roles = [].concat(claims.roles || []).join(", ");
    who.textContent = "as " + claims.sub + (roles ? " (" + roles + ")" : "");
  } catch (e) {
    who.textContent = "token set";
  }
}

// ---------------------------------------------------------------- the task list

async function viewTasks(params) {
  const status = params.get("status") || "";
  const agent = params.get("agent") || "";
  const statusSelect = el("select", { id: "filter-status", name: "status" },
    ["", "active", "completed", "revoked", "expired"].map((s) =>
      el("option", { value: s, selected: s === status ? "selected" : null }, s || "any status")));
  const agentInput = el("input", { id: "filter-agent", name: "agent", placeholder: "agent (exact sub)", value: agent });
  const filters = el("form", { class: "filters", id: "filters", onsubmit: (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    if (statusSelect.value) q.set("status", statusSelect.value);
    if (agentInput.value) q.set("agent", agentInput.value);
    location.hash = "#/tasks" + (q.toString() ? "?" + q : "");
  } }, statusSelect, agentInput, el("button", { type: "submit" }, "Filter"));
  const q = new URLSearchParams();
  if (status) q.set("status", status);
  if (agent) q.set("agent", agent);
  const data = await api("/v1/tasks?" + q);
  const rows = data.tasks.map((t) => el("tr", { class: "task-row", "data-task-id": t.task_id },
    el("td", { class: "mono" }, el("a", { href: "#/task/" + encodeURIComponent(t.task_id) }, t.task_id)),
    el("td", {}, badge(t.status)),
    el("td", { class: "mono agent" }, t.agent),
    el("td", { class: "purpose" }, t.purpose),
    el("td", {}, t.requested_by || ""),
    el("td", { class: "calls" }, t.calls + (t.max_calls ? " / " + t.max_calls : "")),
    el("td", { class: "pending" }, t.pending_approvals.length ? badge(String(t.pending_approvals.length), "pending") : "0"),
    el("td", {}, when(t.created_at))));
  main.replaceChildren(
    el("h2", {}, "Tasks"), filters,
    el("table", { id: "tasks" },
      el("thead", {}, el("tr", {}, ["task", "status", "agent", "purpose", "requested by", "calls",
        "pending approvals", "created"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows)),
    ...(rows.length ? [] : [el("p", { class: "hint" }, "No tasks match.")]));
}

// ---------------------------------------------------------------- one task

function chainTree(records) {
  const calls = new Map();
  for (const r of records) {
    if (r.event !== "call_decided" || !r.call_id) continue;
    calls.set(r.call_id, { r, children: [] });
  }
  const roots = [];
  for (const node of calls.values()) {
    const parent = node.r.parent_call_id && calls.get(node.r.parent_call_id);
    (parent ? parent.children : roots).push(node);
  }
  const render = (nodes) => el("ul", { class: "tree" }, nodes.map((n) => el("li", { class: "chain-node" },
    el("span", { class: "mono" }, (n.r.tool || "?") + "." + (n.r.action || "?")), " ",
    badge(n.r.effect || "?"), " ", el("span", { class: "mono hint" }, n.r.call_id),
    n.children.length ? render(n.children) : null)));
  return roots.length ? render(roots) : el("p", { class: "hint" }, "No calls yet.");
}

function timeline(records) {
  const rows = records.map((r) => {
    const depth = Math.min((r.chain || []).length, 4);
    return el("tr", { class: "audit-row", "data-seq": r.seq },
      el("td", { class: "mono" }, when(r.ts)),
      el("td", { class: "mono" }, "#" + r.seq),
      el("td", { class: "event indent-" + depth }, (depth ? "└ " : "") + r.event),
      el("td", { class: "mono" }, r.tool ? r.tool + "." + (r.action || "") : ""),
      el("td", {}, r.effect ? badge(r.effect) : ""),
      el("td", { class: "mono" }, r.rule_id || ""),
      el("td", {}, r.status === undefined ? "" : String(r.status)),
      el("td", {}, r.latency_ms === undefined ? "" : r.latency_ms + " ms"),
      el("td", { class: "mono" }, r.detail || ""));
  });
  return el("table", { id: "timeline" },
    el("thead", {}, el("tr", {}, ["time (UTC)", "seq", "event", "tool.action", "effect", "rule", "status",
      "latency", "detail"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
}

// an admin ends an active task at once: its tokens, credentials and pending approvals stop working
function revokeForm(task) {
  const reason = el("input", { id: "revoke-reason", class: "reason", placeholder: "reason (kept in the audit trail)",
    maxlength: "500", required: "required" });
  const result = el("span", { class: "result", role: "status" });
  return el("form", { class: "actions", id: "revoke", onsubmit: async (ev) => {
    ev.preventDefault();
    result.textContent = "revoking…";
    try {
      await api("/v1/tasks/" + encodeURIComponent(task.task_id) + "/revoke",
        { method: "POST", body: JSON.stringify({ reason: reason.value }) });
      await viewTask(task.task_id);
    } catch (e) {
      result.textContent = String(e.message || e);
    }
  } }, el("button", { class: "deny", type: "submit" }, "Revoke task"), reason, result);
}

async function viewTask(taskId) {
  const [task, trail] = await Promise.all([
    api("/v1/tasks/" + encodeURIComponent(taskId)),
    api("/v1/tasks/" + encodeURIComponent(taskId) + "/audit"),
  ]);
  const verified = trail.verified
    ? badge("verified", "verified")
    : badge("BROKEN at record #" + trail.first_bad_seq + ": " + trail.reason, "broken");
  main.replaceChildren(
    el("h2", {}, "Task ", el("span", { class: "mono" }, task.task_id)),
    el("dl", { class: "facts" },
      el("dt", {}, "status"), el("dd", {}, badge(task.status)),
      el("dt", {}, "agent"), el("dd", { class: "mono" }, task.agent),
      el("dt", {}, "purpose"), el("dd", { id: "task-purpose" }, task.purpose),
      el("dt", {}, "requested by"), el("dd", {}, task.requested_by || ""),
      el("dt", {}, "calls"), el("dd", {}, String(task.calls)),
      el("dt", {}, "created / expires"), el("dd", {}, when(task.created_at) + " / " + when(task.expires_at)),
      el("dt", {}, "audit chain"), el("dd", { id: "verified" }, verified, " ", trail.records.length + " records")),
    task.status === "active" ? revokeForm(task) : null,
    el("h2", {}, "Chain"), el("div", { id: "chain" }, chainTree(trail.records)),
    el("h2", {}, "Audit timeline"), timeline(trail.records));
}

// ---------------------------------------------------------------- approvals

// A decided card shows its approval's new status and takes no second decision (the store would refuse
// it); a card whose approval was closed elsewhere (409) is settled the same way.
function settle(card, status) {
  if (status) {
    const shown = badge(status);
    card.status.replaceWith(shown);
    card.status = shown;
    const section = card.result.closest("section.approval");
    if (section) section.dataset.status = status;
  }
  for (const control of card.controls) control.disabled = true;
}

async function decide(approval, decision, card) {
  for (const control of card.controls) control.disabled = true;
  card.result.textContent = "sending…";
  try {
    const body = { decision };
    if (card.reason.value) body.reason = card.reason.value;
    const out = await api("/v1/approvals/" + encodeURIComponent(approval.approval_id) + "/decision",
      { method: "POST", body: JSON.stringify(body) });
    card.result.textContent = decision === "approve" ? "approved → " + out.status : "denied → " + out.status;
    settle(card, out.status);
  } catch (e) {
    const why = String(e.message || e);
    card.result.textContent = why;
    if (why.startsWith("approval_closed:")) settle(card, why.split(" ").pop());  // "the approval is denied"
    else if (why.startsWith("duplicate_decision:")) settle(card, null);
    else for (const control of card.controls) control.disabled = false;
  }
}

function approvalCard(a) {
  const reason = el("input", { class: "reason", placeholder: "reason (optional)", maxlength: "500" });
  const result = el("span", { class: "result", role: "status" });
  const task = a.task || {};
  const card = { status: badge(a.status), reason, result, controls: [] };
  const approve = el("button", { class: "approve", type: "button", onclick: () => decide(a, "approve", card) }, "Approve");
  const deny = el("button", { class: "deny", type: "button", onclick: () => decide(a, "deny", card) }, "Deny");
  card.controls.push(approve, deny, reason);
  return el("section", { class: "card approval", "data-approval-id": a.approval_id, "data-status": a.status },
    el("h3", {}, el("span", { class: "mono" }, a.tool + "." + a.action), " ", card.status),
    el("dl", { class: "facts" },
      el("dt", {}, "request"), el("dd", { class: "mono" }, (a.method || "") + " " + (a.path || "")),
      el("dt", {}, "task"), el("dd", {}, el("a", { href: "#/task/" + encodeURIComponent(a.task_id) }, a.task_id)),
      el("dt", {}, "agent"), el("dd", { class: "mono" }, task.agent || ""),
      el("dt", {}, "purpose"), el("dd", { class: "purpose" }, task.purpose || ""),
      el("dt", {}, "requested by"), el("dd", {}, task.requested_by || ""),
      el("dt", {}, "rule"), el("dd", { class: "mono" }, a.rule_id || ""),
      el("dt", {}, "expires"), el("dd", {}, when(a.expires_at))),
    el("h4", {}, "Arguments"),
    el("pre", { class: "args" }, JSON.stringify(a.args, null, 2)),
    el("div", { class: "actions" }, approve, deny, reason, result));
}

async function viewApprovals() {
  const data = await api("/v1/approvals?status=pending");
  main.replaceChildren(
    el("h2", {}, "Pending approvals ", el("button", { type: "button", id: "refresh", onclick: route }, "Refresh")),
    data.approvals.length ? el("div", { id: "approvals" }, data.approvals.map(approvalCard))
      : el("p", { class: "hint", id: "approvals" }, "Nothing is waiting for a decision."));
}

// ---------------------------------------------------------------- the agent inventory

// credentials hygiene: each static secret's age, STALE past max_secret_age_s, and its exception
function secretsCell(secrets) {
  return Object.keys(secrets).sort().map((tool) => {
    const s = secrets[tool];
    const age = typeof s.age_s === "number" ? Math.floor(s.age_s / 86400) + "d" : "?";
    const parts = [tool + ": " + age];
    if (s.stale) parts.push("STALE");
    if (s.exception) parts.push((s.exception_expired ? "exception EXPIRED " : "exception until ")
      + String(s.exception.expires).slice(0, 10) + " (" + s.exception.owner + ")");
    return el("div", { class: s.stale || s.exception_expired ? "secret stale" : "secret" }, parts.join(" "));
  });
}

async function viewAgents() {
  const data = await api("/v1/agents");
  const agents = Array.isArray(data) ? data : data.agents || [];
  const rows = agents.map((a) => el("tr", { class: "agent-row", "data-agent": a.agent },
    el("td", { class: "mono agent" }, el("a", { href: "#/tasks?agent=" + encodeURIComponent(a.agent) }, a.agent)),
    el("td", {}, a.owner || ""),
    el("td", {}, a.purpose || ""),
    el("td", {}, a.registered ? badge("registered", "allow") : badge("unregistered", "deny")),
    el("td", {}, a.suspended ? badge("suspended", "revoked") : ""),
    el("td", {}, when(a.first_seen)),
    el("td", {}, when(a.last_seen)),
    el("td", { class: "calls" }, String(a.active_tasks ?? 0)),
    el("td", { class: "calls" }, String(a.calls ?? 0)),
    el("td", { class: "calls" }, String(a.denied ?? 0)),
    el("td", { class: "mono" }, [].concat(a.tools_used || []).join(", ")),
    el("td", { class: "mono secrets" }, secretsCell(a.secrets || {}))));
  main.replaceChildren(
    el("h2", {}, "Agents"),
    el("table", { id: "agents" },
      el("thead", {}, el("tr", {}, ["agent", "owner", "purpose", "registered", "suspended", "first seen",
        "last seen", "active tasks", "calls", "denied", "tools used", "static secrets"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows)),
    ...(rows.length ? [] : [el("p", { class: "hint" }, "No agent has been seen yet.")]));
}

// ---------------------------------------------------------------- MCP tool pins

async function acceptPin(tool, name, result) {
  result.textContent = "sending…";
  try {
    await api("/v1/tools/" + encodeURIComponent(tool) + "/pins", { method: "POST", body: JSON.stringify({ names: [name] }) });
    result.textContent = "accepted";
  } catch (e) {
    result.textContent = String(e.message || e);
  }
}

function pinChange(tool, change) {
  const result = el("span", { class: "result", role: "status" });
  const side = (label, cls, part) => el("div", { class: "side " + cls },
    el("h4", {}, label), el("div", { class: "mono digest" }, part.digest || "(named in the policy)"),
    el("pre", { class: "definition" }, part.definition ? JSON.stringify(part.definition, null, 2) : "(not kept)"));
  return el("section", { class: "card pin-change", "data-tool": tool, "data-name": change.name },
    el("h3", {}, el("span", { class: "mono" }, tool + " / " + change.name), " ", badge("changed", "deny")),
    el("div", { class: "sides" }, side("pinned", "pinned", change.pinned), side("current", "current", change.current)),
    el("div", { class: "actions" },
      el("button", { class: "approve accept", type: "button", onclick: () => acceptPin(tool, change.name, result) },
        "Accept the current definition"), result));
}

async function viewPins() {
  const data = await api("/v1/tools/pins");
  const changes = data.tools.flatMap((t) => t.changed.map((c) => pinChange(t.tool, c)));
  const rows = data.tools.map((t) => el("tr", { class: "pin-row", "data-tool": t.tool },
    el("td", { class: "mono" }, t.tool), el("td", {}, t.pin), el("td", { class: "calls" }, String(Object.keys(t.pins).length)),
    el("td", { class: "calls" }, String(t.changed.length))));
  main.replaceChildren(
    el("h2", {}, "Changed tool definitions"),
    changes.length ? el("div", { id: "pin-changes" }, changes)
      : el("p", { class: "hint", id: "pin-changes" }, "Every MCP tool definition matches its pin."),
    el("h2", {}, "Pinned MCP tools"),
    el("table", { id: "pins" }, el("thead", {}, el("tr", {}, ["tool", "pin", "pinned", "changed"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows)));
}

// ---------------------------------------------------------------- routing

async function route() {
  showError("");
  const [path, query] = (location.hash.slice(1) || "/tasks").split("?");
  const params = new URLSearchParams(query || "");
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("current", path.startsWith(a.getAttribute("href").slice(1)));
  }
  if (!token() && !signedIn) {
    main.replaceChildren(el("p", { class: "hint" }, "Sign in, or paste a token with the guard:auditor, guard:admin or guard:approver role."));
    return;
  }
  try {
    if (path.startsWith("/task/")) await viewTask(decodeURIComponent(path.slice(6)));
    else if (path === "/approvals") await viewApprovals();
    else if (path === "/agents") await viewAgents();
    else if (path === "/pins") await viewPins();
    else await viewTasks(params);
  } catch (e) {
    showError(String(e.message || e));
  }
}

document.getElementById("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = document.getElementById("token");
  const value = input.value.trim();
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  input.value = "";
  whoAmI();
  route();
});
document.getElementById("forget").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  whoAmI();
  route();
});
document.getElementById("sign-out").addEventListener("click", async () => {
  const body = new URLSearchParams({ csrf: signedIn ? signedIn.csrf : "" });
  await fetch("/logout", { method: "POST", body, credentials: "same-origin" });
  signedIn = null;
  whoAmI();
  route();
});
window.addEventListener("hashchange", route);
loadSession().then(() => {
  whoAmI();
  route();
});
