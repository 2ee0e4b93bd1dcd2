// posgw HQ dashboard: the fleet. The 门店 Fleet view (#fleet, admins and region users: one row
// per store of GET /v1/fleet, offline first) and the editor (#editor, admins only: every
// campaign and flow of GET /v1/fleet/editor with its source, targets and the version history,
// and the forms that PUT and DELETE /v1/fleet/campaigns/{id} and /v1/fleet/flows/{id}).
//
// Reads ride on the dashboard's polls, only while one of these views is shown; an answer that
// is byte for byte the last one redraws nothing, and a read never touches a form being filled
// in (only its store and region pick lists, keeping what is ticked). Refusals are shown as the
// server wrote them: a 422's `errors` one per line, a 409's `error` (the entry is hq.toml's).
import { $, el, bi, text, instant, send, fetchText, oneAtATime, Unauthorized } from "./common.js";

const f = {
  // {go, unauthorized} from the dashboard module.
  hooks: null,
  me: null,
  // The view shown, and the one last drawn for a known user.
  view: "",
  shown: "",
  // GET /v1/fleet: text (to tell an unchanged answer) and parsed; the error of the last read.
  fleetText: "",
  fleet: null,
  fleetError: "",
  // GET /v1/fleet/editor.
  editorText: "",
  editor: null,
  editorError: "",
  // Reads done (shown as data-reads on the views; tests wait on it).
  reads: 0,
  // What each part was last drawn from.
  drawn: {},
  // The entry each form was loaded from (its keys the form does not show are sent back).
  base: { campaign: {}, flow: {} },
};

function changed(part, signature) {
  const key = JSON.stringify(signature);
  if (f.drawn[part] === key) return false;
  f.drawn[part] = key;
  return true;
}

// ---- the module's interface to the dashboard ----
export function init(hooks) {
  f.hooks = hooks;
  $("campaign-form").addEventListener("submit", (event) => onSubmit(event, "campaign"));
  $("flow-form").addEventListener("submit", (event) => onSubmit(event, "flow"));
  $("cf-add-option").addEventListener("click", () => $("cf-options").append(optionRow({})));
  $("ff-add-step").addEventListener("click", () => $("ff-steps").append(stepRow({})));
  $("cf-new").addEventListener("click", () => loadForm("campaign", null));
  $("ff-new").addEventListener("click", () => loadForm("flow", null));
  for (const list of ["cf-options", "ff-steps"]) {
    $(list).addEventListener("click", (event) => {
      const remove = event.target.closest("button.remove-row");
      if (remove) remove.closest(".form-row").remove();
    });
  }
  $("view-editor").addEventListener("click", onListClick);
  loadForm("campaign", null);
  loadForm("flow", null);
}

export function setMe(me) {
  f.me = me;
}

// Which views the signed-in role has: the fleet for admins and region users. The editor is
// routed for everyone so that a region user's link says "not allowed" rather than moving on.
export function allowed(view) {
  if (!f.me) return true;
  if (view === "fleet") return f.me.role === "admin" || f.me.role === "region";
  return true;
}

function mayEdit() {
  return Boolean(f.me) && f.me.role === "admin";
}

export function show(view) {
  const before = f.shown;
  f.view = view;
  if (!f.me) return;
  f.shown = view;
  render();
  if ((view === "fleet" || view === "editor") && view !== before) refresh();
}

// Called after every dashboard poll: reads what the view shown needs.
export async function poll() {
  if (f.view === "fleet" || f.view === "editor") await read();
}

function refresh() {
  read().catch((error) => {
    if (error instanceof Unauthorized) f.hooks.unauthorized();
  });
}

// One read at a time; one asked for during a read runs right after it.
const read = oneAtATime(async () => {
  if (f.view === "fleet" || (f.view === "editor" && mayEdit())) await readFleet();
  if (f.view === "editor" && mayEdit()) await readEditor();
  f.reads += 1;
  $("view-fleet").dataset.reads = String(f.reads);
  $("view-editor").dataset.reads = String(f.reads);
  render();
});

async function readFleet() {
  const got = await fetchText("/v1/fleet", f.fleetText);
  if (!got) return;
  if (got.error) {
    f.fleetError = got.error;
    f.fleetText = "";
    return;
  }
  f.fleet = JSON.parse(got.body);
  f.fleetText = got.body;
  f.fleetError = "";
}

async function readEditor() {
  const got = await fetchText("/v1/fleet/editor", f.editorText);
  if (!got) return;
  if (got.error) {
    f.editorError = got.error;
    f.editorText = "";
    return;
  }
  f.editor = JSON.parse(got.body);
  f.editorText = got.body;
  f.editorError = "";
}

// ---- rendering ----
function render() {
  if (!f.me) return;
  if (f.view === "fleet") renderFleet();
  if (f.view === "editor") renderEditor();
}

// Only the stores the role's scope holds, whatever the answer (the server keeps to it too).
function inScope(store) {
  const me = f.me;
  if (!me || me.role === "admin") return true;
  if (me.role === "region") return store.region === me.region;
  return false;
}

function renderFleet() {
  if (!changed("fleet", [f.fleetText, f.fleetError, f.me])) return;
  $("fleet-error").hidden = !f.fleetError;
  $("fleet-error").replaceChildren(...(f.fleetError ? [...bi("读取失败", "Could not read the fleet"), " · " + f.fleetError] : []));
  if (!f.fleet) return;
  const stores = (f.fleet.stores || []).filter(inScope);
  // Offline first, each group in hq.toml's order.
  const order = stores.map((store, index) => ({ store, index }));
  order.sort((a, b) => Number(a.store.online) - Number(b.store.online) || a.index - b.index);
  const online = stores.filter((s) => s.online).length;
  const stale = stores.filter((s) => s.stale).length;
  const summary = $("fleet-summary");
  summary.dataset.stores = String(stores.length);
  summary.dataset.online = String(online);
  summary.dataset.offline = String(stores.length - online);
  summary.dataset.version = String(f.fleet.version);
  summary.replaceChildren(
    stores.length + " 家门店 stores · ", el("strong", { class: "ok" }, online), " 在线 online · ",
    el("strong", { class: stores.length - online ? "bad" : "" }, stores.length - online), " 离线 offline · ",
    el("strong", { class: stale ? "bad" : "" }, stale), " 配置未更新 stale · 总部版本 HQ version ",
    el("strong", {}, f.fleet.version));
  const head = el("tr", {},
    el("th", {}, bi("门店", "Store")),
    el("th", {}, bi("片区", "Region")),
    el("th", {}, bi("状态", "State")),
    el("th", {}, bi("最后心跳", "Last seen")),
    el("th", { class: "num" }, bi("配置版本", "Config version")),
    el("th", {}, bi("离线设备", "Devices down")),
    el("th", { class: "num" }, bi("积压", "Backlog")),
    el("th", {}, bi("网关", "Gateway")),
    el("th", {}, bi("问题", "Problems")));
  const rows = order.map(({ store }) => fleetRow(store));
  $("fleet-box").replaceChildren(el("table", { id: "fleet-table", class: "fleet-table" },
    el("thead", {}, head), el("tbody", {}, rows)));
  $("fleet-empty").hidden = rows.length > 0;
}

function age(totalSeconds) {
  if (typeof totalSeconds !== "number") return "—";
  if (totalSeconds < 90) return totalSeconds + " s";
  if (totalSeconds < 5400) return Math.round(totalSeconds / 60) + " min";
  if (totalSeconds < 172800) return Math.round(totalSeconds / 3600) + " h";
  return Math.round(totalSeconds / 86400) + " d";
}

function fleetRow(s) {
  const seen = Boolean(s.last_heartbeat_at);
  const state = s.online ? "online" : "offline";
  const label = s.online ? ["在线", "online"] : seen ? ["离线", "offline"] : ["从未上线", "never seen"];
  const down = Array.isArray(s.devices_down) ? s.devices_down : [];
  const version = s.config_version === null || s.config_version === undefined ? "—" : String(s.config_version);
  const problems = [];
  if (s.refused) {
    problems.push(el("div", { class: "problem refused" }, ...bi("拒绝配置", "refused"), " v" + text(s.refused.version) + ": ",
      (s.refused.errors || []).join("; ")));
  }
  for (const clash of s.clashes || []) problems.push(el("div", { class: "problem clash" }, clash));
  if (s.clock_synced === false) problems.push(el("div", { class: "problem" }, ...bi("时钟未同步", "clock not synced")));
  if (s.uplink && s.uplink.last_error) problems.push(el("div", { class: "problem" }, "uplink: " + s.uplink.last_error));
  const classes = [state];
  if (s.stale) classes.push("stale");
  return el("tr", {
    class: classes.join(" "),
    "data-store": s.store,
    "data-online": String(Boolean(s.online)),
    "data-stale": String(Boolean(s.stale)),
    "data-seen": String(seen),
  },
    el("td", { class: "store mono" }, s.store),
    el("td", { class: "region" }, text(s.region)),
    el("td", { class: "state" }, el("span", { class: "chip " + state }, bi(label[0], label[1]))),
    el("td", { class: "last-seen" }, seen ? instant(s.last_heartbeat_at) : "—"),
    el("td", { class: "num version" + (s.stale ? " stale" : ""), "data-applied": version, "data-expected": text(s.expected_version, "") },
      version, s.stale ? el("span", { class: "behind" }, " < v" + text(s.expected_version) + " ", el("span", { class: "en" }, "stale")) : ""),
    el("td", { class: "devices-down", "data-count": down.length }, down.length ? down.join(", ") : seen ? "0" : "—"),
    el("td", { class: "num backlog", "data-records": text(s.backlog_records, "") },
      seen ? text(s.backlog_records, "0") + (s.backlog_records && typeof s.backlog_age_s === "number" ? " · " + age(s.backlog_age_s) : "") : "—"),
    el("td", { class: "gateway" }, seen ? text(s.gateway) + " · " + text(s.gateway_version) : "—"),
    el("td", { class: "problems" }, problems));
}

// ---- the editor ----
function renderEditor() {
  const admin = mayEdit();
  $("editor-denied").hidden = admin;
  $("editor-body").hidden = !admin;
  if (!admin) return;
  $("editor-error").hidden = !f.editorError;
  $("editor-error").replaceChildren(...(f.editorError ? [...bi("读取失败", "Could not read the editor"), " · " + f.editorError] : []));
  renderPickLists();
  if (!f.editor || !changed("editor", [f.editorText])) return;
  const e = f.editor;
  $("editor-version").dataset.version = String(e.version);
  $("editor-version").textContent = "v" + e.version;
  $("editor-campaigns").replaceChildren(entriesTable("campaign", e.campaigns || [], e.file));
  $("editor-flows").replaceChildren(entriesTable("flow", e.flows || [], e.file));
  $("history").replaceChildren(...(e.history || []).map((h) =>
    el("li", { "data-version": h.version },
      el("span", { class: "h-version mono" }, "v" + h.version),
      el("span", { class: "h-at" }, instant(h.at)),
      el("span", { class: "h-who" }, text(h.who)),
      el("ul", { class: "h-what" }, (h.what || []).map((line) => el("li", {}, line))))));
  $("history-empty").hidden = (e.history || []).length > 0;
}

function targets(entry) {
  const stores = entry.stores || [];
  const regions = entry.regions || [];
  if (!stores.length && !regions.length) return bi("全部门店", "every store");
  const parts = [];
  if (regions.length) parts.push(el("span", { class: "t-regions" }, "片区 regions: " + regions.join(", ")));
  if (stores.length) parts.push(el("span", { class: "t-stores" }, "门店 stores: " + stores.join(", ")));
  return parts;
}

function entriesTable(kind, entries, file) {
  const rows = entries.map((item) => {
    const editable = item.source === "editor";
    const source = editable
      ? [...bi("编辑器", "editor"), " · " + text(item.by) + " · " + instant(item.at)]
      : [text(item.source, file) + " ", el("span", { class: "en" }, "只读 read-only")];
    const actions = editable
      ? [el("button", { type: "button", class: "edit", "data-kind": kind, "data-id": item.id }, bi("修改", "Edit")),
        el("button", { type: "button", class: "end", "data-kind": kind, "data-id": item.id }, bi("结束", "End"))]
      : [];
    return el("tr", {
      "data-id": item.id,
      "data-source": editable ? "editor" : "file",
      "data-in-force": String(item.in_force !== false),
    },
      el("td", { class: "id mono" }, item.id),
      el("td", { class: "what" }, text(kind === "campaign" ? item.entry && item.entry.question : item.entry && item.entry.name)),
      el("td", { class: "source" }, source),
      el("td", { class: "targets" }, targets(item)),
      el("td", { class: "in-force" }, item.in_force === false
        ? el("span", { class: "set-aside" }, ...bi("已搁置", "set aside"), ": " + (item.set_aside || []).join("; "))
        : bi("生效", "in force")),
      el("td", { class: "actions" }, actions));
  });
  return el("table", { class: "entries", "data-kind": kind },
    el("thead", {}, el("tr", {},
      el("th", {}, "ID"),
      el("th", {}, kind === "campaign" ? bi("问题", "Question") : bi("名称", "Name")),
      el("th", {}, bi("来源", "Source")),
      el("th", {}, bi("投放范围", "Targets")),
      el("th", {}, bi("状态", "State")),
      el("th", {}))),
    el("tbody", {}, rows.length ? rows : el("tr", { class: "none" }, el("td", { colspan: 6, class: "empty" }, bi("无", "None")))));
}

// The configured stores and regions (GET /v1/fleet: an admin sees every store with its region),
// as checkboxes of both forms; ticks survive a redraw.
function renderPickLists() {
  if (!f.fleet) return;
  const stores = (f.fleet.stores || []).map((s) => s.store);
  const regions = Array.from(new Set((f.fleet.stores || []).map((s) => s.region).filter(Boolean))).sort();
  if (!changed("picks", [stores, regions])) return;
  for (const prefix of ["cf", "ff"]) {
    fillPicks($(prefix + "-stores"), "stores", stores);
    fillPicks($(prefix + "-regions"), "regions", regions);
  }
}

function fillPicks(box, name, values) {
  const ticked = new Set(Array.from(box.querySelectorAll("input:checked")).map((input) => input.value));
  box.replaceChildren(...values.map((value) =>
    el("label", { class: "pick" },
      el("input", { type: "checkbox", name, value, checked: ticked.has(value) ? "" : null }), " " + value)));
  if (!values.length) box.append(el("span", { class: "empty" }, "—"));
}

function setPicks(box, values) {
  const wanted = new Set(values || []);
  // A target not among the checkboxes yet (the fleet not read): add it, ticked.
  for (const value of wanted) {
    if (!Array.from(box.querySelectorAll("input")).some((input) => input.value === value)) {
      box.append(el("label", { class: "pick" }, el("input", { type: "checkbox", value }), " " + value));
    }
  }
  for (const input of box.querySelectorAll("input")) input.checked = wanted.has(input.value);
}

function picked(box) {
  return Array.from(box.querySelectorAll("input:checked")).map((input) => input.value);
}

// ---- the forms ----
function optionRow(option) {
  return el("div", { class: "form-row option-row" },
    el("input", { class: "opt-key mono", placeholder: "key", value: option.key || "", "aria-label": "option key" }),
    el("input", { class: "opt-label", placeholder: "标签 label", value: option.label || "", "aria-label": "option label" }),
    el("button", { type: "button", class: "remove-row", title: "删除 Remove" }, "×"));
}

function stepRow(step) {
  return el("div", { class: "form-row step-row" },
    el("input", { class: "step-key mono", placeholder: "key", value: step.key || "", "aria-label": "step key" }),
    el("input", { class: "step-label", placeholder: "标签 label", value: step.label || "", "aria-label": "step label" }),
    el("input", {
      class: "step-choose",
      placeholder: "可选值, 逗号分隔 choose, comma-separated",
      value: Array.isArray(step.choose) ? step.choose.join(", ") : "",
      "aria-label": "step choose",
    }),
    el("button", { type: "button", class: "remove-row", title: "删除 Remove" }, "×"));
}

// Splits a list typed one per line or comma-separated (Chinese commas too).
function list(value) {
  return value.split(/[\n,，、]/).map((item) => item.trim()).filter(Boolean);
}

// Fills `kind`'s form from an editor entry (null: empty, for a new one).
function loadForm(kind, item) {
  const entry = item ? Object.assign({}, item.entry || {}) : {};
  const stores = item ? item.stores || entry.stores || [] : [];
  const regions = item ? item.regions || entry.regions || [] : [];
  delete entry.stores;
  delete entry.regions;
  f.base[kind] = entry;
  if (kind === "campaign") {
    $("cf-id").value = entry.id || "";
    $("cf-question").value = entry.question || "";
    $("cf-skus").value = (entry.skus || []).join("\n");
    const options = entry.options && entry.options.length ? entry.options : [{}, {}];
    $("cf-options").replaceChildren(...options.map(optionRow));
    $("cf-timeout").value = entry.timeout || "";
    $("cf-starts").value = entry.starts || "";
    $("cf-ends").value = entry.ends || "";
    setPicks($("cf-stores"), stores);
    setPicks($("cf-regions"), regions);
  } else {
    $("ff-id").value = entry.id || "";
    $("ff-name").value = entry.name || "";
    $("ff-skus").value = (entry.skus || []).join("\n");
    const steps = entry.steps && entry.steps.length ? entry.steps : [{}];
    $("ff-steps").replaceChildren(...steps.map(stepRow));
    $("ff-skip").value = (entry.skip_reasons || []).join("\n");
    $("ff-timeout").value = entry.timeout || "";
    setPicks($("ff-stores"), stores);
    setPicks($("ff-regions"), regions);
  }
  showOutcome(kind, null);
  $(kind === "campaign" ? "campaign-form" : "flow-form").dataset.editing = item ? item.id : "";
}

// What `kind`'s form says, in the gateway's keys; keys of the loaded entry the form does not
// show are kept; an empty optional field is left out (the server fills in its default).
function formEntry(kind) {
  const entry = Object.assign({}, f.base[kind]);
  const optional = (key, value) => {
    if (value.trim()) entry[key] = value.trim();
    else delete entry[key];
  };
  if (kind === "campaign") {
    entry.id = $("cf-id").value.trim();
    entry.question = $("cf-question").value.trim();
    entry.skus = list($("cf-skus").value);
    entry.options = Array.from($("cf-options").querySelectorAll(".option-row"))
      .map((row) => ({ key: row.querySelector(".opt-key").value.trim(), label: row.querySelector(".opt-label").value.trim() }))
      .filter((option) => option.key || option.label);
    optional("timeout", $("cf-timeout").value);
    optional("starts", $("cf-starts").value);
    optional("ends", $("cf-ends").value);
    targetsOf(entry, $("cf-stores"), $("cf-regions"));
  } else {
    entry.id = $("ff-id").value.trim();
    entry.name = $("ff-name").value.trim();
    entry.skus = list($("ff-skus").value);
    const before = new Map((f.base.flow.steps || []).map((step) => [step.key, step]));
    entry.steps = Array.from($("ff-steps").querySelectorAll(".step-row"))
      .map((row) => {
        const key = row.querySelector(".step-key").value.trim();
        // A step's keys the form does not show (multi, auto) stay as they were.
        const step = Object.assign({}, before.get(key) || {}, { key, label: row.querySelector(".step-label").value.trim() });
        const choose = list(row.querySelector(".step-choose").value);
        if (choose.length) step.choose = choose;
        else delete step.choose;
        return step;
      })
      .filter((step) => step.key || step.label);
    entry.skip_reasons = list($("ff-skip").value);
    optional("timeout", $("ff-timeout").value);
    targetsOf(entry, $("ff-stores"), $("ff-regions"));
  }
  return entry;
}

// The stores and regions ticked; neither key when none is (the entry goes to every store, and
// the server refuses an empty list).
function targetsOf(entry, storesBox, regionsBox) {
  delete entry.stores;
  delete entry.regions;
  const stores = picked(storesBox);
  const regions = picked(regionsBox);
  if (stores.length) entry.stores = stores;
  if (regions.length) entry.regions = regions;
}

// The answer to a form's request next to it: null clears it.
function showOutcome(kind, outcome) {
  const prefix = kind === "campaign" ? "cf" : "ff";
  const box = $(prefix + "-outcome");
  const errors = $(prefix + "-errors");
  const form = $(kind === "campaign" ? "campaign-form" : "flow-form");
  if (!outcome) {
    box.hidden = true;
    box.replaceChildren();
    errors.replaceChildren();
    errors.hidden = true;
    form.dataset.state = "idle";
    delete form.dataset.status;
    return;
  }
  form.dataset.state = outcome.kind;
  form.dataset.status = String(outcome.status);
  box.hidden = false;
  box.dataset.kind = outcome.kind;
  box.replaceChildren(...[outcome.text].flat());
  errors.replaceChildren(...(outcome.errors || []).map((message) => el("li", {}, message)));
  errors.hidden = !(outcome.errors || []).length;
}

function refusal(answer) {
  const body = answer.body || {};
  const errors = Array.isArray(body.errors) ? body.errors.map(String) : [];
  let meaning;
  if (answer.status === 409) meaning = bi("该条目在 hq.toml 中，只能在文件里修改", "This entry lives in hq.toml: change it there");
  else if (answer.status === 422) meaning = bi("配置未通过校验", "The configuration does not validate");
  else if (answer.status === 403) meaning = bi("无权修改", "Not allowed");
  else if (answer.status === 404) meaning = bi("编辑器中没有该条目", "No such entry in the editor");
  else meaning = bi("保存失败", "Not saved");
  return {
    kind: "error",
    status: answer.status,
    text: [...meaning, el("span", { class: "server-error" }, " (" + answer.status + ") " + answer.message)],
    errors,
  };
}

async function call(method, path, body) {
  try {
    return await send(method, path, body);
  } catch (error) {
    if (error instanceof Unauthorized) {
      f.hooks.unauthorized();
      return null;
    }
    return { ok: false, status: 0, body: null, message: error.message };
  }
}

async function onSubmit(event, kind) {
  event.preventDefault();
  const form = event.target;
  const entry = formEntry(kind);
  if (!entry.id) {
    showOutcome(kind, { kind: "error", status: 0, text: bi("请填写 ID", "An id is required"), errors: [] });
    return;
  }
  form.dataset.state = "sending";
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  const answer = await call("PUT", "/v1/fleet/" + kind + "s/" + encodeURIComponent(entry.id), entry);
  button.disabled = false;
  if (!answer) return;
  if (answer.ok) {
    const version = answer.body && answer.body.version;
    const text = answer.body && answer.body.changed === false
      ? [...bi("没有变化", "Nothing changed"), " · v" + version]
      : [...bi("已保存", "Saved"), " · v" + version];
    // The entry as stored (defaults filled in) goes back into the form.
    const stored = answer.body && answer.body[kind];
    if (stored) loadForm(kind, { id: stored.id, entry: stored, stores: stored.stores, regions: stored.regions });
    showOutcome(kind, { kind: "ok", status: answer.status, text });
  } else {
    showOutcome(kind, refusal(answer));
  }
  refresh();
}

// The list's Edit and End buttons. End asks once more on the button itself before it sends.
async function onListClick(event) {
  const button = event.target.closest("button.edit, button.end");
  if (!button || !f.editor) return;
  const kind = button.dataset.kind;
  const id = button.dataset.id;
  const item = (f.editor[kind + "s"] || []).find((entry) => entry.id === id);
  if (button.classList.contains("edit")) {
    if (item) {
      loadForm(kind, item);
      $(kind === "campaign" ? "campaign-form" : "flow-form").scrollIntoView({ block: "start" });
    }
    return;
  }
  if (button.dataset.armed !== "true") {
    button.dataset.armed = "true";
    button.replaceChildren(...bi("确认结束?", "Confirm end"));
    return;
  }
  button.disabled = true;
  const answer = await call("DELETE", "/v1/fleet/" + kind + "s/" + encodeURIComponent(id));
  if (!answer) return;
  if (answer.ok) {
    showOutcome(kind, {
      kind: "ok",
      status: answer.status,
      text: [...bi("已结束", "Ended"), " " + id + " · v" + (answer.body && answer.body.version)],
    });
  } else {
    button.disabled = false;
    showOutcome(kind, refusal(answer));
  }
  refresh();
}
