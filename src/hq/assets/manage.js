// posgw HQ dashboard: the management views, per role. The yardstick header (过程数据完整率,
// 预警响应及时率, 销售行为可追溯率 against their goals and the industry baselines) on every view,
// the stores table with a completeness sparkline per store, a store's page, the regions' heat
// map and the alerts with their acknowledge and resolve actions.
//
// What a user sees is what the server sends for their scope; the page adds a second fence: a
// region user's page only ever draws their own region's stores, clerks and alerts, and other
// regions as aggregates (the heat map). Figures come from /v1/yardsticks and /v1/alerts, read
// every READ_EVERY polls (they move by the day) and at once after a filter, a period or an
// action; a read whose answer is byte for byte the last one redraws nothing. Big tables are
// built off-document and put in with one replaceChildren; sorting moves the rows it has.
import {
  $, el, svg, bi, text, percent, percentValue, shortTime, instant, postJson, fetchText, oneAtATime,
  Unauthorized,
  YARDSTICKS, standing, STANDING_LABELS,
} from "./common.js";
import { stepsTable, stepMatrix } from "./flows.js";

// Dashboard polls (2 s each) between two reads of the management figures.
const READ_EVERY = 5;
// The server's default period, in days (no from/to sent).
const DEFAULT_PERIOD = 30;

const ALERT_STATES = {
  open: ["待处理", "Open"],
  acknowledged: ["已确认", "Acknowledged"],
  resolved: ["已解决", "Resolved"],
};

const m = {
  // {go, unauthorized} from the dashboard module.
  hooks: null,
  // GET /v1/me.
  me: null,
  // The view shown and its argument (#store/CODE, #regions/ID, #alerts/ID).
  view: "",
  arg: "",
  // The latest /v1/stats (a store page's flows).
  stats: null,
  // /v1/yardsticks: the body as text (to tell an unchanged answer) and parsed.
  yardText: "",
  yard: null,
  yardError: "",
  // The period shown, in days, and the newest day of the server's default period.
  period: DEFAULT_PERIOD,
  latestDay: "",
  // /v1/alerts with the alerts page's filters.
  alertsText: "",
  alerts: null,
  alertCounts: {},
  alertsError: "",
  filter: { state: "", region: "" },
  // /v1/alerts unfiltered, for a store's page.
  storeAlertsText: "",
  storeAlerts: null,
  // Bumped when what they hold changes, so a view redraws only then.
  version: { yard: 0, alerts: 0, storeAlerts: 0, focused: 0 },
  // Polls since the last read, and reads done (shown as #view-alerts[data-reads]).
  polls: READ_EVERY,
  reads: 0,
  // Column and direction of each sortable table, by its id.
  sorts: {},
  // The alert a #alerts/ID link points at, whether the page scrolled to it yet, and the
  // alert as GET /v1/alerts/{id} tells it (with its delivery per target; null: not read,
  // false: not found in the caller's scope).
  focus: "",
  scrolledTo: "",
  focused: null,
  focusedText: "",
  // Typed but not yet sent, by alert id: {note, action}; and the last action's answer.
  drafts: {},
  messages: {},
  // Alert cards by id: {signature, node}.
  cards: new Map(),
  // What each part was last drawn from.
  drawn: {},
};

function changed(part, signature) {
  const key = JSON.stringify(signature);
  if (m.drawn[part] === key) return false;
  m.drawn[part] = key;
  return true;
}

// ---- the module's interface to the dashboard ----
export function init(hooks) {
  m.hooks = hooks;
  $("yard-period").addEventListener("change", (event) => {
    m.period = Number(event.target.value) || DEFAULT_PERIOD;
    refresh();
  });
  $("alert-state").addEventListener("change", (event) => {
    m.filter.state = event.target.value;
    refresh();
  });
  $("alert-region").addEventListener("change", (event) => {
    m.filter.region = event.target.value;
    refresh();
  });
  document.addEventListener("click", onSortClick);
  $("alerts-list").addEventListener("submit", onAlertSubmit);
  $("alerts-list").addEventListener("input", onAlertInput);
}

export function setMe(me) {
  m.me = me;
  $("alert-region-label").hidden = me.role !== "admin";
}

// Which views the signed-in role has.
export function allowed(view) {
  if (!m.me) return true;
  if (m.me.role === "store") return view !== "stores" && view !== "regions";
  return true;
}

export function show(view, arg) {
  const before = m.view;
  m.view = view;
  m.arg = arg;
  if (view === "alerts") {
    if (arg !== m.focus) {
      m.scrolledTo = "";
      m.focused = null;
      m.focusedText = "";
      if (arg && m.me) refresh();
    }
    m.focus = arg;
    // A link to one alert shows it whatever its state.
    if (arg && m.filter.state) {
      m.filter.state = "";
      $("alert-state").value = "";
      refresh();
    }
  }
  if (!m.me) return;
  render();
  // A store's page lists its alerts: read them when it opens.
  if (view === "store" && before !== "store") refresh();
}

// Called after every dashboard poll (which read /v1/stats): reads the figures when due.
export async function poll(stats) {
  m.stats = stats;
  m.polls += 1;
  if (m.polls >= READ_EVERY) await read();
  else render();
}

// Reads at once (a filter, a period, an action), outside the poll.
function refresh() {
  read().catch((error) => {
    if (error instanceof Unauthorized) m.hooks.unauthorized();
  });
}

// One read at a time; one asked for during a read runs right after it.
const read = oneAtATime(async () => {
  m.polls = 0;
  await readYardsticks();
  await readAlerts();
  if (m.view === "store") await readStoreAlerts();
  if (m.view === "alerts" && m.focus) await readFocused();
  m.reads += 1;
  $("view-alerts").dataset.reads = String(m.reads);
  render();
});

// ---- reading ----
function addDays(day, days) {
  const date = new Date(day + "T00:00:00Z");
  date.setUTCDate(date.getUTCDate() + days);
  return date.toISOString().slice(0, 10);
}

async function readYardsticks() {
  const params = new URLSearchParams();
  if (m.period !== DEFAULT_PERIOD && m.latestDay) {
    params.set("from", addDays(m.latestDay, 1 - m.period));
    params.set("to", m.latestDay);
  }
  const query = params.toString();
  const got = await fetchText("/v1/yardsticks" + (query ? "?" + query : ""), m.yardText);
  if (!got) return;
  if (got.error) {
    if (m.yardError !== got.error) m.version.yard += 1;
    m.yardError = got.error;
    return;
  }
  try {
    m.yard = JSON.parse(got.body);
  } catch (_) {
    m.yardError = "not JSON";
    return;
  }
  m.yardText = got.body;
  m.yardError = "";
  if (!query && m.yard.to) m.latestDay = m.yard.to;
  m.version.yard += 1;
}

// Only what the role's scope holds, whatever the answer (the server already keeps to it).
function inScope(alert) {
  const me = m.me;
  if (!me || me.role === "admin") return true;
  if (me.role === "region") return alert.region === me.region;
  return alert.store === me.store;
}

async function readAlerts() {
  const params = new URLSearchParams();
  if (m.filter.state) params.set("state", m.filter.state);
  if (m.filter.region) params.set("region", m.filter.region);
  const query = params.toString();
  const got = await fetchText("/v1/alerts" + (query ? "?" + query : ""), m.alertsText);
  if (!got) return;
  if (got.error) {
    if (m.alertsError !== got.error) m.version.alerts += 1;
    m.alertsError = got.error;
    return;
  }
  const body = JSON.parse(got.body);
  m.alertsText = got.body;
  m.alertsError = "";
  m.alerts = (body.alerts || []).filter(inScope);
  m.alertCounts = body.regions || {};
  m.version.alerts += 1;
}

// The alert a link points at, with its delivery state: shown whatever the list's filters.
async function readFocused() {
  const id = m.focus;
  const got = await fetchText("/v1/alerts/" + encodeURIComponent(id), m.focusedText);
  if (!got || id !== m.focus) return;
  if (got.error) {
    m.focused = false;
    m.focusedText = "";
  } else {
    const alert = JSON.parse(got.body);
    m.focusedText = got.body;
    m.focused = inScope(alert) ? alert : false;
  }
  m.version.focused += 1;
}

async function readStoreAlerts() {
  const got = await fetchText("/v1/alerts", m.storeAlertsText);
  if (!got || got.error) return;
  m.storeAlertsText = got.body;
  m.storeAlerts = (JSON.parse(got.body).alerts || []).filter(inScope);
  m.version.storeAlerts += 1;
}

// ---- what the figures are ----
function goalOf(key) {
  const spec = YARDSTICKS.find((y) => y.key === key);
  const goals = (m.yard && m.yard.goals) || {};
  return typeof goals[key] === "number" ? goals[key] : spec.goal;
}
function baselineOf(key) {
  const spec = YARDSTICKS.find((y) => y.key === key);
  const baselines = (m.yard && m.yard.baselines) || {};
  return typeof baselines[key] === "number" ? baselines[key] : spec.baseline;
}
function valueOf(figs, key) {
  const fig = figs && figs[key];
  return fig && typeof fig.value === "number" ? fig.value : null;
}
function regionName(id) {
  const region = m.yard && m.yard.regions && m.yard.regions[id];
  return region && region.name ? region.name : id;
}

// The figures of the header: the chain for an admin, the region for its users, the store for
// its manager; with what they are of.
function headerScope() {
  const me = m.me;
  const yard = m.yard || {};
  if (me.role === "region") {
    return { figs: (yard.regions || {})[me.region], label: [regionName(me.region) + " ", el("span", { class: "en" }, me.region)] };
  }
  if (me.role === "store") {
    return { figs: (yard.stores || {})[me.store], label: bi("门店", me.store) };
  }
  return { figs: yard.chain, label: bi("全链", "Chain") };
}

function counts(key, fig) {
  if (!fig) return "";
  if (key === "completeness") return (fig.filled ?? "—") + " / " + (fig.required ?? "—") + " 项 fields";
  if (key === "alert_response") return (fig.within_24h ?? "—") + " / " + (fig.alerts ?? "—") + " 预警 in 24 h";
  return (fig.traced ?? "—") + " / " + (fig.sales ?? "—") + " 销售 sales";
}

// One yardstick: the value, its standing, a meter with the goal and baseline marked.
function yardCard(spec, figs) {
  const value = valueOf(figs, spec.key);
  const goal = goalOf(spec.key);
  const baseline = baselineOf(spec.key);
  const state = standing(value, goal, baseline);
  const fill = el("span", { class: "fill" });
  fill.style.setProperty("width", Math.min(100, (value || 0) * 100) + "%");
  const goalMark = el("span", { class: "mark goal", title: "目标 Goal " + percent(goal) });
  goalMark.style.setProperty("left", Math.min(100, goal * 100) + "%");
  const baseMark = el("span", { class: "mark baseline", title: "行业基准 Baseline " + percent(baseline) });
  baseMark.style.setProperty("left", Math.min(100, baseline * 100) + "%");
  const verdict = STANDING_LABELS[state];
  return el("div", { class: "yardstick", "data-key": spec.key, "data-state": state, "data-value": percentValue(value) },
    el("span", { class: "ys-label" }, bi(spec.zh, spec.en)),
    el("div", { class: "ys-line" },
      el("strong", { class: "ys-value" }, value === null ? "—" : percent(value)),
      el("span", { class: "ys-verdict" }, bi(verdict[0], verdict[1]))),
    el("span", { class: "ys-meter" }, fill, baseMark, goalMark),
    el("span", { class: "ys-refs" },
      "目标 ", el("span", { class: "en" }, "Goal"), " ", el("strong", { class: "ys-goal" }, percent(goal)),
      " · 行业基准 ", el("span", { class: "en" }, "Baseline"), " ", el("strong", { class: "ys-baseline" }, percent(baseline))),
    el("span", { class: "ys-counts" }, counts(spec.key, figs && figs[spec.key])));
}

function yardCards(figs) {
  return el("div", { class: "ys-cards" }, YARDSTICKS.map((spec) => yardCard(spec, figs)));
}

// ---- rendering ----
function render() {
  if (!m.me) return;
  renderHeader();
  if (m.view === "stores") renderStores();
  if (m.view === "store") renderStorePage();
  if (m.view === "regions") renderRegions();
  if (m.view === "alerts") renderAlerts();
}

function renderHeader() {
  if (!changed("header", [m.version.yard, m.me])) return;
  const box = $("yardsticks");
  const scope = headerScope();
  box.dataset.scope = m.me.role;
  $("yard-scope").replaceChildren(...[scope.label].flat());
  $("yard-cards").replaceChildren(yardCards(scope.figs));
  const yard = m.yard;
  $("yard-range").textContent = yard && yard.from ? yard.from + " – " + yard.to : "";
  $("yard-error").hidden = !m.yardError;
  $("yard-error").replaceChildren(...(m.yardError ? [...bi("指标暂不可用", "Yardsticks unavailable"), " · " + m.yardError] : []));
}

// ---- the stores table ----
const STORE_COLUMNS = [
  { key: "store", zh: "门店", en: "Store" },
  { key: "region", zh: "片区", en: "Region" },
  ...YARDSTICKS.map((y) => ({ key: y.key, zh: y.zh, en: y.en, figure: true })),
  { key: "records", zh: "记录", en: "Records", number: true },
  { key: "trend", zh: "每日完整率", en: "Completeness by day", unsorted: true },
];

// The store codes `yard.stores` holds (stores seen in full), of `region` when given.
function storeCodes(region) {
  const stores = (m.yard && m.yard.stores) || {};
  return Object.keys(stores).filter((code) => !region || stores[code].region === region).sort();
}

// A table of `codes`, one row per store, sortable by any column; `id` keeps its sort order.
function storesTable(id, codes) {
  const stores = (m.yard && m.yard.stores) || {};
  const sort = m.sorts[id] || { key: "store", dir: "asc" };
  const head = el("tr", {}, STORE_COLUMNS.map((col) =>
    el("th", {
      class: (col.figure || col.number ? "num " : "") + "col-" + col.key,
      "data-key": col.key,
      "aria-sort": col.key === sort.key ? (sort.dir === "asc" ? "ascending" : "descending") : null,
    }, col.unsorted
      ? bi(col.zh, col.en)
      : el("button", { type: "button", class: "sort", "data-table": id, "data-key": col.key }, bi(col.zh, col.en)))));
  const rows = codes.map((code) => {
    const s = stores[code] || {};
    const days = Array.isArray(s.days) ? s.days : [];
    const records = days.reduce((sum, day) => sum + (typeof day.records === "number" ? day.records : 0), 0);
    const values = { store: code, region: regionName(s.region || ""), records };
    const cells = [
      el("td", { class: "store" }, el("a", { class: "store-link", href: "#store/" + encodeURIComponent(code), "data-store": code }, code)),
      el("td", { class: "region", "data-region": s.region || "" }, text(values.region)),
    ];
    for (const spec of YARDSTICKS) {
      const value = valueOf(s, spec.key);
      values[spec.key] = value;
      cells.push(figureCell(spec.key, value, "td", "num fig-cell", counts(spec.key, s[spec.key])));
    }
    cells.push(el("td", { class: "num records" }, records));
    cells.push(el("td", { class: "trend" }, sparkline(days, goalOf("completeness"))));
    return { values, node: el("tr", { "data-store": code }, cells) };
  });
  const body = el("tbody");
  const table = el("table", { id, class: "stores-table", "data-rows": rows.length }, el("thead", {}, head), body);
  table.rowsByValue = rows;
  applySort(table, sort);
  if (rows.length === 0) {
    body.append(el("tr", {}, el("td", { colspan: STORE_COLUMNS.length, class: "empty" }, bi("暂无门店数据", "No store figures yet"))));
  }
  return table;
}

// A figure as a coloured cell: its value, its standing against goal and baseline.
function figureCell(key, value, tag, cls, title) {
  const state = standing(value, goalOf(key), baselineOf(key));
  return el(tag, {
    class: cls,
    "data-key": key,
    "data-state": state,
    "data-value": percentValue(value),
    title: (title ? title + " · " : "") + "目标 goal " + percent(goalOf(key)) + " · 行业 baseline " + percent(baselineOf(key)),
  }, value === null ? "—" : percent(value));
}

// Figures by number, names by text; rows without a value always last, whichever direction.
function compareRows(a, b, key, dir) {
  const x = a.values[key];
  const y = b.values[key];
  const xNone = x === null || x === undefined;
  const yNone = y === null || y === undefined;
  let order;
  if (xNone || yNone) order = xNone === yNone ? 0 : xNone ? 1 : -1;
  else {
    order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
    if (dir === "desc") order = -order;
  }
  return order || a.values.store.localeCompare(b.values.store);
}

function applySort(table, sort) {
  const rows = table.rowsByValue.slice().sort((a, b) => compareRows(a, b, sort.key, sort.dir));
  // Moving the existing rows, all at once: one layout, however many stores.
  table.tBodies[0].append(...rows.map((row) => row.node));
  table.dataset.sortKey = sort.key;
  table.dataset.sortDir = sort.dir;
  for (const th of table.tHead.rows[0].cells) {
    if (th.dataset.key === sort.key) th.setAttribute("aria-sort", sort.dir === "asc" ? "ascending" : "descending");
    else th.removeAttribute("aria-sort");
  }
}

function onSortClick(event) {
  const button = event.target.closest("button.sort[data-table]");
  if (!button) return;
  const table = document.getElementById(button.dataset.table);
  if (!table || !table.rowsByValue) return;
  const key = button.dataset.key;
  const now = m.sorts[table.id] || { key: "store", dir: "asc" };
  const sort = { key, dir: now.key === key && now.dir === "asc" ? "desc" : "asc" };
  m.sorts[table.id] = sort;
  applySort(table, sort);
}

// Daily completeness as a polyline per run of days with a value (a day without one is a gap),
// over a dashed goal line.
const SPARK = { width: 120, height: 26 };
function sparkline(days, goal) {
  const { width, height } = SPARK;
  const y = (value) => (height - 2 - Math.max(0, Math.min(1, value)) * (height - 4)).toFixed(1);
  const chart = svg("svg", {
    class: "spark", viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
    "data-days": days.length,
    "aria-label": "每日完整率 Completeness by day",
  });
  chart.append(svg("line", { class: "spark-goal", x1: 0, x2: width, y1: y(goal), y2: y(goal) }));
  const last = days.length ? days[days.length - 1] : null;
  if (last) {
    chart.append(svg("title", {}, days[0].day + " – " + last.day + ": " +
      (typeof last.completeness === "number" ? percent(last.completeness) : "—")));
  }
  for (const line of runs(days, "completeness", width, y)) chart.append(line);
  return chart;
}

// Polylines of `key` over `days`, one per run of days that have a value.
function runs(days, key, width, y, x0 = 0) {
  const n = days.length;
  const span = width - x0;
  const x = (i) => (n > 1 ? x0 + (i * span) / (n - 1) : x0 + span / 2);
  const lines = [];
  let run = [];
  const close = () => {
    if (run.length === 1) {
      // A day alone between gaps: a short dash, so it shows.
      const [px, py] = run[0];
      run = [[px - 1.5, py], [px + 1.5, py]];
    }
    if (run.length) {
      lines.push(svg("polyline", {
        class: "series " + key,
        points: run.map(([px, py]) => Number(px).toFixed(1) + "," + py).join(" "),
      }));
    }
    run = [];
  };
  days.forEach((day, i) => {
    const value = day[key];
    if (typeof value === "number") run.push([x(i), y(value)]);
    else close();
  });
  close();
  return lines;
}

function renderStores() {
  if (!changed("stores", [m.version.yard])) return;
  const started = performance.now();
  const codes = storeCodes("");
  const table = storesTable("stores-table", codes);
  $("stores-box").replaceChildren(table);
  $("stores-count").textContent = String(codes.length);
  // What building the rows cost (the layout follows once, after this).
  table.dataset.buildMs = String(Math.round(performance.now() - started));
}

// ---- a store's page ----
function renderStorePage() {
  const code = m.arg || (m.me.role === "store" ? m.me.store : "");
  const stats = m.stats && m.stats.stores ? m.stats.stores[code] : undefined;
  if (!changed("store", [code, m.version.yard, m.version.storeAlerts, stats || null])) return;
  const page = $("store-page");
  const figs = m.yard && m.yard.stores ? m.yard.stores[code] : undefined;
  // A store outside the scope is not even named back.
  page.dataset.store = figs || stats ? code : "";
  if (!figs && !stats) {
    page.dataset.state = m.yard || m.stats ? "unknown" : "loading";
    page.replaceChildren(el("p", { class: "empty" }, m.yard || m.stats
      ? bi("没有此门店的数据，或不在您的查看范围内", "No figures of this store, or it is outside what you may see")
      : bi("加载中", "Loading…")));
    return;
  }
  page.dataset.state = "shown";
  const region = figs && figs.region;
  const regionLink = region
    ? (m.me.role === "store" ? text(regionName(region)) : el("a", { href: "#regions/" + encodeURIComponent(region) }, regionName(region)))
    : "—";
  const parts = [
    el("header", { class: "store-head" },
      el("h2", {}, bi("门店", "Store"), " ", el("strong", { id: "store-code", class: "mono" }, code)),
      el("span", { class: "store-region" }, bi("片区", "Region"), " ", regionLink),
      el("span", { class: "store-records" }, bi("记录", "Records"), " " + text(stats && stats.records, "0"))),
    // The header already shows a store manager their store's figures.
    m.me.role === "store" ? null
      : el("section", { id: "store-yardsticks", class: "panel" }, el("h3", {}, bi("本店指标", "This store's yardsticks")), yardCards(figs)),
    trendPanel(figs ? figs.days || [] : []),
    storeAlertsPanel(code),
    flowsPanel(stats),
    clerksPanel("store-clerks", (clerk) => clerk.store === code),
  ];
  page.replaceChildren(...parts.filter(Boolean));
}

// Completeness and traceability by day, with the completeness goal.
function trendPanel(days) {
  const width = 640;
  const height = 150;
  const left = 36;
  const y = (value) => (height - 16 - Math.max(0, Math.min(1, value)) * (height - 26)).toFixed(1);
  const chart = svg("svg", {
    id: "store-trend-chart", class: "trend", viewBox: `0 0 ${width} ${height}`, role: "img",
    "data-days": days.length, "aria-label": "每日趋势 Trend by day",
  });
  for (const tick of [0, 0.5, 1]) {
    chart.append(svg("line", { class: "grid", x1: left, x2: width, y1: y(tick), y2: y(tick) }));
    chart.append(svg("text", { class: "tick", x: left - 4, y: Number(y(tick)) + 4, "text-anchor": "end" }, percent(tick)));
  }
  const goal = goalOf("completeness");
  chart.append(svg("line", { class: "trend-goal", x1: left, x2: width, y1: y(goal), y2: y(goal) }));
  for (const key of ["traceability", "completeness"]) {
    for (const line of runs(days, key, width - 4, y, left + 4)) chart.append(line);
  }
  if (days.length) {
    chart.append(svg("text", { class: "tick", x: left + 4, y: height - 2 }, days[0].day));
    chart.append(svg("text", { class: "tick", x: width - 4, y: height - 2, "text-anchor": "end" }, days[days.length - 1].day));
  }
  return el("section", { id: "store-trend", class: "panel" },
    el("h3", {}, bi("每日趋势", "Trend by day")),
    el("p", { class: "legend" },
      el("span", { class: "key completeness" }, bi("过程数据完整率", "Completeness")),
      el("span", { class: "key traceability" }, bi("销售行为可追溯率", "Traceability")),
      el("span", { class: "key goal" }, bi("完整率目标", "Completeness goal") , " " + percent(goal))),
    days.length ? chart : el("p", { class: "empty" }, bi("期间内无记录", "No records in the period")));
}

function storeAlertsPanel(code) {
  const open = (m.storeAlerts || []).filter((a) => a.store === code && a.state !== "resolved");
  const items = open.map((a) => el("li", { "data-id": a.id, "data-state": a.state },
    stateChip(a.state), " ",
    el("a", { class: "alert-link", href: "#alerts/" + encodeURIComponent(a.id) }, text(a.title, a.rule)),
    " · " + (a.days || []).join("、")));
  return el("section", { id: "store-alerts", class: "panel", "data-count": open.length },
    el("h3", {}, bi("未解决预警", "Open alerts"), " ", el("span", { class: "count" }, String(open.length))),
    items.length ? el("ul", { class: "alert-links" }, items)
      : el("p", { class: "empty" }, m.storeAlerts ? bi("无", "None") : bi("加载中", "Loading…")));
}

function flowsPanel(stats) {
  const flows = (stats && stats.flows) || {};
  const ids = Object.keys(flows).sort();
  const box = el("section", { id: "store-flows", class: "panel" }, el("h3", {}, bi("问诊流程 步骤完整率", "Consultation flows · step completeness")));
  if (ids.length === 0) {
    box.append(el("p", { class: "empty" }, bi("暂无问诊记录", "No consultation records yet")));
    return box;
  }
  for (const id of ids) {
    const f = flows[id];
    const clerks = Object.entries(f.clerks || {}).sort();
    box.append(el("article", { class: "flow", "data-flow": id, "data-consultations": f.consultations },
      el("h4", {}, bi("流程", "Flow"), " ", el("span", { class: "mono" }, id), " · " + f.consultations + " 问诊 consultations · " +
        (f.consultations ? percent(f.completeness || 0) : "—")),
      stepsTable(f.steps || []),
      stepMatrix(f.steps || [], clerks, "clerk")));
  }
  return box;
}

// The clerks of /v1/yardsticks that `keep` picks (only clerks seen in full are sent).
function clerksPanel(id, keep) {
  const clerks = Object.entries((m.yard && m.yard.clerks) || {}).filter(([, c]) => keep(c)).sort();
  const rows = clerks.map(([name, c]) => el("tr", { "data-clerk": name },
    el("td", { class: "clerk" }, name),
    el("td", { class: "store" }, text(c.store)),
    ...YARDSTICKS.map((spec) => figureCell(spec.key, valueOf(c, spec.key), "td", "num fig-cell", counts(spec.key, c[spec.key])))));
  return el("section", { class: "panel clerks-box" },
    el("h3", {}, bi("店员指标", "Clerks")),
    el("table", { id, class: "clerks-table" },
      el("thead", {}, el("tr", {},
        el("th", {}, bi("店员", "Clerk")), el("th", {}, bi("门店", "Store")),
        ...YARDSTICKS.map((spec) => el("th", { class: "num" }, bi(spec.zh, spec.en))))),
      el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 5, class: "empty" }, bi("暂无", "None"))))));
}

// ---- regions ----
function renderRegions() {
  const me = m.me;
  const detail = me.role === "region" ? me.region : m.arg || Object.keys((m.yard && m.yard.regions) || {}).sort()[0] || "";
  if (!changed("regions", [m.version.yard, m.version.alerts, detail])) return;
  $("heatmap-box").replaceChildren(heatmap(detail));
  const box = $("region-detail");
  box.dataset.region = detail;
  const region = m.yard && m.yard.regions ? m.yard.regions[detail] : undefined;
  if (!detail || !region) {
    box.replaceChildren(el("p", { class: "empty" }, m.yard ? bi("暂无片区数据", "No region figures yet") : bi("加载中", "Loading…")));
    return;
  }
  box.replaceChildren(
    el("h2", {}, bi("片区", "Region"), " ", el("strong", {}, regionName(detail)), " ", el("span", { class: "en mono" }, detail)),
    el("section", { class: "panel" }, yardCards(region)),
    el("section", { class: "panel" }, el("h3", {}, bi("门店", "Stores")), storesTable("region-stores-table", storeCodes(detail))),
    clerksPanel("region-clerks", (clerk) => storeCodes(detail).includes(clerk.store)));
}

// One row per region: its three figures and open alerts, each cell coloured by where it stands.
// Aggregates only: this is all a region user sees of the other regions.
function heatmap(picked) {
  const regions = (m.yard && m.yard.regions) || {};
  // Alert counts also come for stores in no region ("(none)"): not a row of regions.
  const counted = Object.keys(m.alertCounts || {}).filter((id) => id !== "(none)");
  const ids = Array.from(new Set([...Object.keys(regions), ...counted])).sort();
  const own = m.me.role === "region" ? m.me.region : "";
  // A region without alerts has no count: 0 once the alerts were read.
  const read = m.alerts !== null && !m.alertsError;
  const rows = ids.map((id) => {
    const r = regions[id] || {};
    const c = (m.alertCounts || {})[id];
    const open = c ? c.open || 0 : read ? 0 : null;
    const name = m.me.role === "admin"
      ? el("a", { href: "#regions/" + encodeURIComponent(id) }, regionName(id))
      : regionName(id);
    return el("tr", {
      "data-region": id,
      class: (id === own ? "own " : "") + (id === picked ? "picked" : ""),
    },
      el("th", { scope: "row", class: "region-name" }, name, " ", el("span", { class: "en mono" }, id),
        el("span", { class: "region-stores" }, text(r.stores, "—") + " 店 stores")),
      ...YARDSTICKS.map((spec) => figureCell(spec.key, valueOf(r, spec.key), "td", "heat", counts(spec.key, r[spec.key]))),
      el("td", {
        class: "heat alerts",
        "data-key": "open_alerts",
        "data-value": open === null ? "" : String(open),
        "data-state": open === null ? "none" : open > 0 ? "alerting" : "clear",
      }, open === null ? "—" : String(open)));
  });
  return el("table", { id: "heatmap", class: "heatmap" },
    el("thead", {}, el("tr", {},
      el("th", {}, bi("片区", "Region")),
      ...YARDSTICKS.map((spec) => el("th", { class: "num" }, bi(spec.zh, spec.en),
        el("span", { class: "en" }, "目标 " + percent(goalOf(spec.key)) + " · 行业 " + percent(baselineOf(spec.key))))),
      el("th", { class: "num" }, bi("待处理预警", "Open alerts")))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 5, class: "empty" }, bi("暂无", "None")))));
}

// ---- alerts ----
function stateChip(state) {
  const label = ALERT_STATES[state] || [state, ""];
  return el("span", { class: "chip alert-state state-" + state }, bi(label[0], label[1]));
}

const STATE_ORDER = ["open", "acknowledged", "resolved"];

function renderAlerts() {
  renderAlertFilters();
  const list = $("alerts-list");
  $("alerts-error").hidden = !m.alertsError;
  $("alerts-error").replaceChildren(...(m.alertsError ? [...bi("预警暂不可用", "Alerts unavailable"), " · " + m.alertsError] : []));
  $("view-alerts").dataset.focus = m.focus;
  const alerts = (m.alerts || []).slice().sort((a, b) =>
    STATE_ORDER.indexOf(a.state) - STATE_ORDER.indexOf(b.state) || String(b.opened_at).localeCompare(String(a.opened_at)));
  // The linked alert is shown even when the filters leave it out, first.
  const linked = m.focused && m.focused.id === m.focus ? m.focused : null;
  if (linked && !alerts.some((a) => a.id === linked.id)) alerts.unshift(linked);
  const nodes = alerts.map((alert) => {
    const delivery = linked && alert.id === linked.id ? linked.delivery || null : null;
    const signature = JSON.stringify([alert, m.messages[alert.id] || null, m.focus === alert.id, delivery]);
    const cached = m.cards.get(alert.id);
    if (cached && cached.signature === signature) return cached.node;
    const node = alertCard(alert, delivery);
    if (cached && cached.node.isConnected) cached.node.replaceWith(node);
    m.cards.set(alert.id, { signature, node });
    return node;
  });
  // Redraw the list only when its cards or their order changed, so an unchanged card (maybe
  // with text being typed in it) stays where it is.
  const now = Array.from(list.children);
  if (now.length !== nodes.length || now.some((node, i) => node !== nodes[i])) list.replaceChildren(...nodes);
  for (const id of Array.from(m.cards.keys())) {
    if (!alerts.some((a) => a.id === id)) m.cards.delete(id);
  }
  $("alerts-empty").hidden = !(m.alerts && alerts.length === 0);
  const focused = m.focus && alerts.find((a) => a.id === m.focus);
  // The linked alert, when HQ has it for this user, is in `alerts` (added above).
  $("alert-missing").hidden = !(m.focus && !focused && m.focused === false);
  $("alert-missing").replaceChildren(...bi("未找到预警 " + m.focus, "No such alert, or it is outside what you may see"));
  if (focused && m.scrolledTo !== m.focus) {
    m.scrolledTo = m.focus;
    m.cards.get(m.focus).node.scrollIntoView({ block: "start" });
  }
  renderAlertCounts();
  renderSupervisors();
}

function renderAlertFilters() {
  const select = $("alert-region");
  const ids = Object.keys(Object.assign({}, (m.yard && m.yard.regions) || {}, m.alertCounts || {})).sort();
  const have = Array.from(select.options).slice(1).map((o) => o.value);
  if (have.join("\n") === ids.join("\n")) return;
  select.replaceChildren(el("option", { value: "" }, "全部片区 All regions"),
    ...ids.map((id) => el("option", { value: id }, regionName(id) + " · " + id)));
  select.value = m.filter.region;
}

function renderAlertCounts() {
  if (!changed("alert-counts", [m.version.alerts, m.version.yard])) return;
  const entries = Object.entries(m.alertCounts || {}).sort();
  $("alert-counts").replaceChildren(...entries.map(([id, c]) =>
    el("span", { class: "region-count", "data-region": id, "data-open": c.open || 0 },
      regionName(id) + ": " + (c.open || 0) + " 待处理 open · " + (c.acknowledged || 0) + " 已确认 · " + (c.resolved || 0) + " 已解决")));
}

function renderSupervisors() {
  if (!changed("supervisors", [m.version.yard])) return;
  const supervisors = Object.entries((m.yard && m.yard.supervisors) || {}).sort();
  $("supervisors-box").hidden = supervisors.length === 0;
  $("supervisors").replaceChildren(...supervisors.map(([name, s]) => el("tr", { "data-supervisor": name },
    el("td", {}, name),
    el("td", { class: "num" }, text(s.acknowledged, "0")),
    el("td", { class: "num" }, text(s.within_24h, "0")),
    el("td", { class: "num" }, s.acknowledged ? percent((s.within_24h || 0) / s.acknowledged) : "—"))));
}

// A metric's value as written in an alert: rates as percentages, hours and minutes as numbers.
function metricValue(metric, value) {
  if (typeof value !== "number") return text(value);
  return /rate|completeness/.test(metric || "") ? percent(value) : String(Math.round(value * 10) / 10);
}

// A customer reference (32 hex digits) short enough for a table, both ends kept.
function shortRef(ref) {
  if (typeof ref !== "string" || ref === "") return "—";
  return ref.length > 14 ? ref.slice(0, 8) + "…" + ref.slice(-4) : ref;
}

// The rule's threshold as written: "< 65%", "> 4".
function threshold(a) {
  const t = a.threshold || {};
  if (typeof t.below === "number") return "< " + metricValue(a.metric, t.below);
  if (typeof t.above === "number") return "> " + metricValue(a.metric, t.above);
  return "—";
}

// Where the alert's message stands, per robot target (GET /v1/alerts/{id}).
const DELIVERY_STATES = {
  pending: ["发送中", "Pending"],
  delivered: ["已送达", "Delivered"],
  abandoned: ["已放弃", "Abandoned"],
};

function deliveryTable(delivery) {
  return el("table", { class: "alert-delivery" },
    el("thead", {}, el("tr", {},
      el("th", {}, bi("通知目标", "Target")), el("th", {}, bi("状态", "State")),
      el("th", { class: "num" }, bi("尝试", "Attempts")), el("th", {}, bi("时间", "When")), el("th", {}, bi("错误", "Last error")))),
    el("tbody", {}, delivery.map((d) => {
      const label = DELIVERY_STATES[d.state] || [d.state, ""];
      return el("tr", { "data-target": d.target, "data-state": d.state },
        el("td", { class: "mono" }, text(d.target)),
        el("td", {}, bi(label[0], label[1])),
        el("td", { class: "num" }, text(d.attempts, "0")),
        el("td", {}, d.delivered_at ? instant(d.delivered_at) : d.next_attempt_at ? ["下次 next ", instant(d.next_attempt_at)] : "—"),
        el("td", {}, text(d.last_error)));
    })));
}

function alertCard(a, delivery) {
  const seesStore = m.me.role !== "store" || a.store === m.me.store;
  const meta = [
    [bi("门店", "Store"), seesStore ? el("a", { class: "store-link", href: "#store/" + encodeURIComponent(a.store) }, a.store) : text(a.store), "alert-store"],
    [bi("片区", "Region"), text(regionName(a.region || "")), "alert-region"],
    [bi("规则", "Rule"), el("span", { class: "mono" }, text(a.rule)), "alert-rule"],
    [bi("阈值", "Threshold"), threshold(a), "threshold"],
    [bi("日期", "Days"), (a.days || []).join("、") || "—", "alert-days"],
  ];
  const times = [
    [bi("发出", "Opened"), instant(a.opened_at), "opened"],
    [bi("送达", "Delivered"), [a.delivered_at ? instant(a.delivered_at) : bi("未送达", "Not delivered yet"),
      Array.isArray(a.targets) && a.targets.length ? " → " + a.targets.join(", ") : ""], "delivered"],
    [bi("确认", "Acknowledged"), a.acknowledged_at ? instant(a.acknowledged_at) : "—", "acknowledged"],
    [bi("确认人", "By"), text(a.acknowledged_by), "acknowledged-by"],
    [bi("备注", "Note"), text(a.note), "note"],
    [bi("解决", "Resolved"), a.resolved_at ? instant(a.resolved_at) : "—", "resolved"],
    [bi("解决人", "By"), text(a.resolved_by), "resolved-by"],
    [bi("处理措施", "Action"), text(a.action), "action"],
    [bi("响应用时", "Response"), typeof a.response_minutes === "number" ? a.response_minutes + " min" : "—", "response"],
  ];
  const dl = (rows, cls) => el("dl", { class: "meta " + cls }, rows.map(([label, value, key]) =>
    el("div", { "data-field": key }, el("dt", {}, label), el("dd", {}, value))));
  const values = (a.values || []).map((v) => el("tr", { "data-day": v.day },
    el("td", {}, text(v.day)), el("td", { class: "num" }, metricValue(a.metric, v.value)), el("td", { class: "num" }, text(v.count))));
  const cases = (a.cases || []).map((c) => el("tr", { class: "case" },
    el("td", { class: "time" }, shortTime(c.time)),
    el("td", { class: "clerk" }, text(c.clerk)),
    el("td", { class: "customer mono", title: text(c.customer, "") }, shortRef(c.customer)),
    el("td", { class: "symptoms" }, Array.isArray(c.symptoms) && c.symptoms.length ? c.symptoms.join("、") : "—"),
    el("td", { class: "value" }, text(c.value))));
  const card = el("article", {
    class: "alert-card" + (m.focus === a.id ? " focused" : ""),
    "data-id": a.id, "data-state": a.state, "data-store": a.store, "data-region": a.region,
    "aria-current": m.focus === a.id ? "true" : null,
  },
    el("header", { class: "alert-head" },
      stateChip(a.state),
      el("h3", { class: "alert-title" }, text(a.title, a.rule)),
      el("span", { class: "alert-id mono" }, a.id)),
    dl(meta, "alert-meta"),
    el("table", { class: "alert-values" },
      el("thead", {}, el("tr", {}, el("th", {}, bi("日期", "Day")), el("th", { class: "num" }, bi("数值", "Value")), el("th", { class: "num" }, bi("例数", "Cases")))),
      el("tbody", {}, values)),
    dl(times, "alert-times"));
  if (Array.isArray(delivery) && delivery.length) card.append(deliveryTable(delivery));
  card.append(el("details", { class: "alert-cases", open: cases.length ? "" : null },
    el("summary", {}, bi("病例", "Cases"), " " + cases.length +
      (typeof a.cases_total === "number" && a.cases_total > cases.length ? " / " + a.cases_total : "")),
    cases.length ? el("table", {},
      el("thead", {}, el("tr", {}, el("th", {}, bi("时间", "Time")), el("th", {}, bi("店员", "Clerk")),
        el("th", {}, bi("顾客", "Customer ref.")), el("th", {}, bi("症状", "Symptoms")), el("th", {}, bi("值", "Value")))),
      el("tbody", {}, cases)) : el("p", { class: "empty" }, "—")));
  const message = m.messages[a.id];
  if (a.state !== "resolved") card.append(alertActions(a));
  card.append(el("p", {
    class: "alert-message", role: "alert", "data-kind": message ? message.kind : null,
    "data-status": message ? message.status : null, hidden: message ? null : "",
  }, message ? message.text : ""));
  return card;
}

function alertActions(a) {
  const draft = m.drafts[a.id] || {};
  const box = el("div", { class: "alert-actions" });
  if (a.state === "open") {
    const note = el("input", { class: "ack-note", name: "note", placeholder: "备注 Note (optional)", autocomplete: "off" });
    note.value = draft.note || "";
    box.append(el("form", { class: "ack-form", "data-id": a.id },
      note, el("button", { type: "submit", class: "ack" }, bi("确认收到", "Acknowledge"))));
  }
  const action = el("textarea", {
    class: "resolve-action", name: "action", rows: 2, "aria-required": "true", maxlength: 2000,
    placeholder: "处理措施（必填）Action taken (required)",
  });
  action.value = draft.action || "";
  box.append(el("form", { class: "resolve-form", "data-id": a.id },
    action, el("button", { type: "submit", class: "resolve" }, bi("解决", "Resolve"))));
  return box;
}

function onAlertInput(event) {
  const form = event.target.closest("form[data-id]");
  if (!form) return;
  const draft = m.drafts[form.dataset.id] || (m.drafts[form.dataset.id] = {});
  draft[event.target.name] = event.target.value;
}

// What a refused action means, in words, with the server's own: [acknowledge, resolve].
const REFUSALS = {
  403: [["无权处理此预警", "Not allowed for this alert"], ["无权处理此预警", "Not allowed for this alert"]],
  404: [["预警不存在", "No such alert"], ["预警不存在", "No such alert"]],
  409: [["此预警已被确认", "Already acknowledged"], ["此预警已解决", "Already resolved"]],
  422: [["请求无效", "Refused as written"], ["请填写处理措施", "An action is required"]],
};

async function onAlertSubmit(event) {
  const form = event.target.closest("form[data-id]");
  if (!form) return;
  event.preventDefault();
  const id = form.dataset.id;
  const resolving = form.classList.contains("resolve-form");
  const path = "/v1/alerts/" + encodeURIComponent(id) + (resolving ? "/resolve" : "/ack");
  const body = resolving
    ? { action: form.elements.action.value }
    : (form.elements.note.value.trim() ? { note: form.elements.note.value.trim() } : {});
  for (const button of form.querySelectorAll("button")) button.disabled = true;
  let answer;
  try {
    answer = await postJson(path, body);
  } catch (error) {
    if (error instanceof Unauthorized) {
      m.hooks.unauthorized();
      return;
    }
    answer = { ok: false, status: 0, message: error.message };
  }
  if (answer.ok) {
    delete m.drafts[id];
    m.messages[id] = { kind: "ok", status: answer.status, text: resolving ? "已解决 Resolved" : "已确认 Acknowledged" };
    if (answer.body && answer.body.id === id && m.alerts) {
      m.alerts = m.alerts.map((a) => (a.id === id ? answer.body : a));
      m.alertsText = "";
    }
  } else {
    const meaning = REFUSALS[answer.status] && REFUSALS[answer.status][resolving ? 1 : 0];
    m.messages[id] = {
      kind: "error",
      status: answer.status,
      text: (meaning ? meaning[0] + " · " + meaning[1] + " " : "") + "(" + answer.status + ") " + answer.message,
    };
  }
  render();
  for (const button of form.querySelectorAll("button")) button.disabled = false;
  // The list and the alert response figure change with it.
  refresh();
}
