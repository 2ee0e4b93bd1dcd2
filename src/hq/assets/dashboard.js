// posgw HQ dashboard. Polls the read endpoints every 2 s (one request after the other) and
// redraws; every record text goes into the page with textContent, never as HTML. The
// management views (yardsticks, stores, regions, alerts, a store's page) are in manage.js, the
// fleet view and the campaign and flow editor in fleet.js; this module owns the overview, the traceability view, the polling and the navigation.
import {
  $, el, bi, text, percent, shortTime, seconds, money, api, auth, Unauthorized, loginUrl,
} from "./common.js";
import { GOAL, stepsTable, stepMatrix } from "./flows.js";
import * as manage from "./manage.js";
import * as fleet from "./fleet.js";

(() => {
  const POLL_MS = 2000;
  const FEED_MAX = 50;
  const RECEIPTS_MAX = 100;
  // The first poll reads attributions and sales from this many records before the newest, so
  // opening the page on a large HQ does not page through its whole history.
  const LOOKBACK = 200000;
  const PAGE_LIMIT = 1000;
  // Pages of one kind read per poll at most; the rest follow on the next poll.
  const MAX_PAGES = 50;
  const TOKEN_KEY = "posgw-hq-token";

  const OUTCOMES = {
    answered: ["已回答", "Answered"],
    skipped: ["跳过", "Skipped"],
    timeout: ["超时", "Timed out"],
  };
  const FLOW_OUTCOMES = {
    completed: ["已完成", "Completed"],
    incomplete: ["未完成", "Incomplete"],
    abandoned: ["已放弃", "Abandoned"],
  };
  // How a held scan went on to the POS (a consultation's released_by).
  const RELEASED_BY = {
    steps: ["步骤完成放行", "Steps done"],
    timeout: ["超时放行", "Hold timeout"],
    closed: ["问诊结束放行", "Consultation closed"],
    shutdown: ["网关停止放行", "Gateway stopped"],
    restart: ["网关重启未放行", "Gateway restarted: not released"],
  };
  const STEP_STATES = {
    done: ["已完成", "Done"],
    skipped: ["跳过", "Skipped"],
    missing: ["缺失", "Missing"],
  };

  const state = {
    // Who is signed in (GET /v1/me): {name, role, region?, store?}; null until known.
    me: null,
    // Signed in with the session cookie (not a token): a 401 means signing in again.
    session: false,
    stats: null,
    store: "",
    feed: [], // attribution records, newest first
    sales: [], // sale records, newest first
    after: { attribution: null, sale: null },
    trace: null, // {receipt, store, hq_seq, report}
    timer: null,
    polling: false,
  };

  function outcomeChip(outcome) {
    const label = OUTCOMES[outcome] || [outcome, ""];
    return el("span", { class: "chip " + outcome }, bi(label[0], label[1]));
  }

  // ---- token ----
  function takeToken() {
    const url = new URL(window.location.href);
    const fromUrl = url.searchParams.get("token");
    if (fromUrl) {
      sessionStorage.setItem(TOKEN_KEY, fromUrl);
      url.searchParams.delete("token");
      history.replaceState(null, "", url.pathname + url.search + url.hash);
    }
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  function askForToken(message) {
    auth.token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    showBanner(message, "error");
    setStatus("unauthorized", bi("未授权", "Not authorised"));
    $("token-form").hidden = false;
    $("token-form-login").setAttribute("href", loginUrl());
    $("token-input").focus();
  }

  // A 401 on any call: a session that expired (or whose user was removed) signs in again and
  // comes back to the view shown; a refused token asks for another one.
  function unauthorized() {
    if (state.session) {
      window.location.assign(loginUrl());
      return;
    }
    if (state.timer) clearTimeout(state.timer);
    state.timer = null;
    state.me = null;
    askForToken(bi("管理令牌无效或缺失 (401)", "The admin token is missing or was refused — enter it below"));
  }

  // Reads the records of `kind` that arrived since the last call; returns how many.
  async function readNew(kind, newest) {
    let after = state.after[kind];
    const found = [];
    for (let page = 0; page < MAX_PAGES; page++) {
      const response = await api(`/v1/records?kind=${kind}&after=${after}&limit=${PAGE_LIMIT}`);
      const body = await response.text();
      for (const line of body.split("\n")) {
        if (line.trim() === "") continue;
        try {
          found.push(JSON.parse(line));
        } catch (_) {
          // HQ only serves valid JSON; skip anything else rather than stop the feed
        }
      }
      const next = Number(response.headers.get("posgw-next-after"));
      if (!Number.isFinite(next) || next <= after) break;
      after = next;
      if (after >= newest) break;
    }
    state.after[kind] = after;
    if (found.length === 0) return 0;
    found.reverse();
    const list = kind === "attribution" ? "feed" : "sales";
    const max = kind === "attribution" ? FEED_MAX * 4 : RECEIPTS_MAX * 4;
    // Kept beyond what is shown so a store filter still has entries to show.
    state[list] = found.concat(state[list]).slice(0, max);
    return found.length;
  }

  async function poll() {
    state.timer = null;
    if (!state.me || state.polling) return;
    state.polling = true;
    try {
      const stats = await (await api("/v1/stats")).json();
      state.stats = stats;
      if (state.after.attribution === null) {
        const start = Math.max(0, stats.hq_seq - LOOKBACK);
        state.after.attribution = start;
        state.after.sale = start;
      }
      const attributions = await readNew("attribution", stats.hq_seq);
      const sales = await readNew("sale", stats.hq_seq);
      hideBanner();
      render();
      await manage.poll(stats);
      await fleet.poll();
      setStatus("live", [
        ...bi("实时", "Live"),
        " · " + new Date(stats.generated_at).toLocaleTimeString("zh-CN", { hour12: false }) +
          " · hq_seq " + stats.hq_seq,
      ]);
      // A receipt shown before all its links arrived is traced again when new records come.
      const trace = state.trace;
      if (trace && trace.report && !trace.report.complete && attributions + sales > 0) {
        loadTrace(trace.receipt, trace.store, trace.hq_seq, true);
      }
    } catch (error) {
      if (error instanceof Unauthorized) {
        state.polling = false;
        unauthorized();
        return;
      }
      setStatus("error", [...bi("连接中断", "Connection lost"), " · " + error.message]);
    }
    state.polling = false;
    state.timer = setTimeout(poll, POLL_MS);
  }

  function restart() {
    if (state.timer) clearTimeout(state.timer);
    state.timer = null;
    poll();
  }

  // ---- status and banner ----
  function setStatus(kind, content) {
    $("status").dataset.state = kind;
    document.body.dataset.state = kind;
    $("status-text").replaceChildren(...[content].flat());
  }
  function showBanner(content, kind) {
    const banner = $("banner");
    banner.dataset.kind = kind;
    banner.replaceChildren(...[content].flat());
    banner.hidden = false;
  }
  function hideBanner() {
    $("banner").hidden = true;
  }

  // ---- rendering ----
  // What each part was last drawn from: a part is redrawn only when that changes, so a poll
  // that brought nothing new never replaces an element under the analyst's pointer.
  const drawn = {};
  function changed(part, signature) {
    if (drawn[part] === signature) return false;
    drawn[part] = signature;
    return true;
  }

  function render() {
    renderStoreFilter();
    renderCampaigns();
    renderFlows();
    renderFeed();
    renderReceipts();
  }

  function renderStoreFilter() {
    const select = $("store-filter");
    // Other regions come as one aggregate entry each (`region:ID`): no records to pick from.
    const stores = Object.keys(state.stats.stores || {})
      .filter((code) => !code.startsWith("region:"))
      .sort();
    const have = Array.from(select.options).slice(1).map((o) => o.value);
    if (have.join("\n") === stores.join("\n")) return;
    select.replaceChildren(
      el("option", { value: "" }, "全部门店 All stores"),
      ...stores.map((code) => el("option", { value: code }, code)),
    );
    select.value = stores.includes(state.store) ? state.store : "";
    state.store = select.value;
  }

  function scopeCampaigns() {
    const stats = state.stats;
    if (!state.store) return stats.campaigns || {};
    const store = (stats.stores || {})[state.store];
    return (store && store.campaigns) || {};
  }

  function renderCampaigns() {
    const campaigns = scopeCampaigns();
    const stores = Object.entries(state.stats.stores || {}).map(([code, store]) => [code, store.campaigns]);
    if (!changed("campaigns", JSON.stringify([state.store, campaigns, stores]))) return;
    const ids = Object.keys(campaigns).sort();
    $("no-campaigns").hidden = ids.length > 0;
    $("campaigns").replaceChildren(...ids.map((id) => campaignPanel(id, campaigns[id])));
  }

  function campaignPanel(id, c) {
    const outcomes = c.outcomes || {};
    const answered = outcomes.answered || 0;
    const completeness = c.completeness || 0;
    const met = c.opened > 0 && completeness >= GOAL;
    const panel = el("article", {
      class: "campaign",
      "data-campaign": id,
      "data-opened": c.opened,
      "data-answered": answered,
      "data-skipped": outcomes.skipped || 0,
      "data-timeout": outcomes.timeout || 0,
      "data-completeness": Math.round(completeness * 1000) / 10,
    });
    panel.append(
      el("header", { class: "campaign-head" },
        el("h3", { class: "question" }, text(c.question, id)),
        el("span", { class: "campaign-id" }, id)),
    );
    const fig = (key, zh, en, value) =>
      el("div", { class: "fig", "data-key": key },
        el("span", { class: "label" }, bi(zh, en)),
        el("strong", { class: "value" }, value));
    panel.append(
      el("div", { class: "figures" },
        fig("opened", "弹出", "Opened", c.opened),
        fig("answered", "已回答", "Answered", answered),
        fig("skipped", "跳过", "Skipped", outcomes.skipped || 0),
        fig("timeout", "超时", "Timed out", outcomes.timeout || 0),
        fig("latency", "中位用时", "Median latency", seconds(c.median_latency_ms))),
    );
    panel.append(completenessMeter(completeness, met, c.opened));
    panel.append(answerChart(c, answered));
    panel.append(breakdownTable(id));
    return panel;
  }

  function completenessMeter(completeness, met, opened) {
    const fill = el("span", { class: "fill" });
    fill.style.setProperty("width", Math.min(100, completeness * 100) + "%");
    const goal = el("span", { class: "goal", title: "85%" });
    goal.style.setProperty("left", GOAL * 100 + "%");
    return el("div", { class: "completeness " + (opened === 0 ? "none" : met ? "ok" : "below") },
      el("div", { class: "completeness-head" },
        el("span", { class: "label" }, bi("完成率", "Completeness")),
        el("strong", { class: "value" }, opened === 0 ? "—" : percent(completeness)),
        el("span", { class: "verdict" },
          opened === 0 ? "" : met ? bi("已达标", "goal met") : bi("未达 85%", "below the 85% goal"))),
      el("div", { class: "meter" }, fill, goal, el("span", { class: "goal-label" }, "85%")));
  }

  function answerChart(c, answered) {
    const answers = c.answers || {};
    const labels = c.answer_labels || {};
    const keys = Array.from(new Set([...Object.keys(labels), ...Object.keys(answers)]));
    keys.sort((a, b) => (answers[b] || 0) - (answers[a] || 0) || a.localeCompare(b));
    const chart = el("div", { class: "chart" },
      el("h4", {}, bi("回答分布", "Answer shares")));
    if (keys.length === 0) {
      chart.append(el("p", { class: "empty" }, bi("尚无回答", "No answers yet")));
      return chart;
    }
    for (const key of keys) {
      const count = answers[key] || 0;
      const share = answered > 0 ? count / answered : 0;
      const fill = el("span", { class: "fill" });
      fill.style.setProperty("width", share * 100 + "%");
      chart.append(
        el("div", { class: "share", "data-key": key, "data-count": count },
          el("span", { class: "bar-label" }, text(labels[key], key), " ", el("span", { class: "en" }, key)),
          el("span", { class: "track" }, fill),
          el("span", { class: "bar-value" }, count + " · " + percent(share))));
    }
    return chart;
  }

  // Per store over all stores, or per station within the store picked.
  function breakdownTable(id) {
    const rows = [];
    if (!state.store) {
      for (const [code, store] of Object.entries(state.stats.stores || {}).sort()) {
        const c = (store.campaigns || {})[id];
        if (c) rows.push([code, c]);
      }
    } else {
      const store = (state.stats.stores || {})[state.store];
      const c = store && (store.campaigns || {})[id];
      for (const [station, b] of Object.entries((c && c.stations) || {}).sort()) rows.push([station, b]);
    }
    const first = state.store ? bi("收银台", "Station") : bi("门店", "Store");
    const table = el("table", { class: "breakdown" },
      el("thead", {}, el("tr", {},
        el("th", {}, first),
        el("th", { class: "num" }, bi("弹出", "Opened")),
        el("th", { class: "num" }, bi("回答", "Answered")),
        el("th", { class: "num" }, bi("跳过", "Skipped")),
        el("th", { class: "num" }, bi("超时", "Timed out")),
        el("th", { class: "rate" }, bi("完成率", "Completeness")))));
    const body = el("tbody");
    for (const [name, b] of rows) {
      const o = b.outcomes || {};
      const fill = el("span", { class: "fill" });
      fill.style.setProperty("width", Math.min(100, (b.completeness || 0) * 100) + "%");
      const goal = el("span", { class: "goal" });
      goal.style.setProperty("left", GOAL * 100 + "%");
      const ok = b.opened > 0 && b.completeness >= GOAL;
      body.append(el("tr", { "data-row": name },
        el("td", { class: "name" }, name),
        el("td", { class: "num" }, b.opened),
        el("td", { class: "num" }, o.answered || 0),
        el("td", { class: "num" }, o.skipped || 0),
        el("td", { class: "num" }, o.timeout || 0),
        el("td", { class: "rate " + (ok ? "ok" : "below") },
          el("div", { class: "rate-cell" },
            el("span", { class: "mini meter" }, fill, goal),
            el("span", { class: "rate-value" }, percent(b.completeness || 0))))));
    }
    table.append(body);
    return table;
  }

  // ---- consultation flows: step completeness ----
  function scopeFlows() {
    const stats = state.stats;
    if (!state.store) return stats.flows || {};
    const store = (stats.stores || {})[state.store];
    return (store && store.flows) || {};
  }

  function renderFlows() {
    const flows = scopeFlows();
    const stores = Object.entries(state.stats.stores || {}).map(([code, store]) => [code, store.flows]);
    if (!changed("flows", JSON.stringify([state.store, flows, stores]))) return;
    const ids = Object.keys(flows).sort();
    $("flows-section").hidden = ids.length === 0;
    $("flows").replaceChildren(...ids.map((id) => flowPanel(id, flows[id])));
  }

  function flowPanel(id, f) {
    const o = f.outcomes || {};
    const panel = el("article", {
      class: "flow",
      "data-flow": id,
      "data-consultations": f.consultations,
      "data-completeness": Math.round((f.completeness || 0) * 1000) / 10,
    });
    panel.append(el("header", { class: "campaign-head" },
      el("h3", {}, bi("问诊流程", "Flow")),
      el("span", { class: "campaign-id" }, id)));
    const fig = (key, zh, en, value) =>
      el("div", { class: "fig", "data-key": key },
        el("span", { class: "label" }, bi(zh, en)),
        el("strong", { class: "value" }, value));
    panel.append(el("div", { class: "figures" },
      fig("consultations", "问诊", "Consultations", f.consultations),
      fig("completed", "已完成", "Completed", o.completed || 0),
      fig("incomplete", "未完成", "Incomplete", o.incomplete || 0),
      fig("abandoned", "已放弃", "Abandoned", o.abandoned || 0),
      fig("completeness", "过程数据完整率", "Steps done", f.consultations ? percent(f.completeness || 0) : "—")));
    panel.append(stepsTable(f.steps || []));
    panel.append(flowMatrix(id, f.steps || []));
    panel.append(heldLine(f.held || {}));
    return panel;
  }

  // Step completeness per store (over all stores) or per clerk (in the store picked).
  function flowMatrix(id, steps) {
    const rows = [];
    if (!state.store) {
      for (const [code, store] of Object.entries(state.stats.stores || {}).sort()) {
        const f = (store.flows || {})[id];
        if (f) rows.push([code, f]);
      }
    } else {
      const store = (state.stats.stores || {})[state.store];
      const f = store && (store.flows || {})[id];
      for (const [clerk, b] of Object.entries((f && f.clerks) || {}).sort()) rows.push([clerk, b]);
    }
    return stepMatrix(steps, rows, state.store ? "clerk" : "store");
  }

  function heldLine(held) {
    // In the gateway's order (steps, timeout, closed, ...), unknown ones last.
    const order = Object.keys(RELEASED_BY);
    const rank = (by) => (order.includes(by) ? order.indexOf(by) : order.length);
    const entries = Object.entries(held).sort((a, b) => rank(a[0]) - rank(b[0]) || a[0].localeCompare(b[0]));
    const line = el("p", { class: "held" }, el("span", { class: "label" }, bi("扫码扣留", "Held scans")), ": ");
    if (entries.length === 0) {
      line.append("—");
      return line;
    }
    entries.forEach(([by, h], index) => {
      const label = RELEASED_BY[by] || [by, ""];
      if (index > 0) line.append(" · ");
      line.append(el("span", { class: "held-by", "data-released-by": by, "data-count": h.consultations },
        bi(label[0], label[1]), " " + h.consultations + " · 中位 " + seconds(h.median_held_ms)));
    });
    return line;
  }

  function inScope(record) {
    return !state.store || record.store === state.store;
  }

  function renderFeed() {
    const shown = state.feed.filter(inScope).slice(0, FEED_MAX);
    if (!changed("feed", JSON.stringify([state.store, shown.map((record) => record.hq_seq)]))) return;
    const rows = shown.map((record) => {
      const d = record.data || {};
      const answer = d.outcome === "answered"
        ? el("span", { class: "answer" }, text(d.answer_label, d.answer), " ", el("span", { class: "en" }, text(d.answer, "")))
        : outcomeChip(d.outcome);
      const receipt = d.receipt
        ? el("button", { type: "button", class: "link receipt-link", "data-receipt": d.receipt, "data-store": record.store }, d.receipt)
        : "—";
      return el("tr", { "data-id": record.id, "data-prompt": d.prompt, "data-outcome": d.outcome, "data-store": record.store },
        el("td", { class: "time" }, shortTime(d.resolved_at || record.ts)),
        el("td", { class: "store" }, text(record.store)),
        el("td", { class: "station" }, text(d.station)),
        el("td", { class: "sku mono" }, text(d.sku)),
        el("td", { class: "outcome" }, answer),
        el("td", { class: "clerk" }, text(d.clerk)),
        el("td", { class: "receipt" }, receipt));
    });
    $("feed").replaceChildren(...rows);
    $("feed-empty").hidden = rows.length > 0;
  }

  function renderReceipts() {
    const shown = state.sales.filter((s) => inScope(s) && s.data && s.data.receipt).slice(0, RECEIPTS_MAX);
    const selected = state.trace && state.trace.report ? state.trace.report.sale.hq_seq : null;
    if (!changed("receipts", JSON.stringify([state.store, selected, shown.map((sale) => sale.hq_seq)]))) return;
    const items = shown.map((sale) => {
      const d = sale.data;
      const lines = Array.isArray(d.lines) ? d.lines : [];
      const linked = lines.filter((l) => l && l.prompt).length;
      return el("li", {},
        el("button", {
          type: "button",
          class: "receipt-item" + (sale.hq_seq === selected ? " selected" : ""),
          "data-receipt": d.receipt,
          "data-store": sale.store,
          "data-hq-seq": sale.hq_seq,
        },
          el("span", { class: "receipt-no mono" }, d.receipt),
          el("span", { class: "receipt-total" }, money(d.total, d.currency)),
          el("span", { class: "receipt-where" }, sale.store + " · " + text(d.station) + " · " + shortTime(sale.ts)),
          el("span", { class: "receipt-lines" },
            lines.length + " 行 lines" + (linked ? " · " + linked + " 推荐 prompted" : "") +
            (d.consultation ? " · 问诊 consultation" : ""))));
    });
    $("receipts").replaceChildren(...items);
    $("receipts-empty").hidden = items.length > 0;
  }

  // ---- traceability ----
  async function loadTrace(receipt, store, hqSeq, quiet) {
    const params = new URLSearchParams({ receipt });
    if (store) params.set("store", store);
    if (hqSeq) params.set("hq_seq", String(hqSeq));
    state.trace = { receipt, store, hq_seq: hqSeq, report: null };
    if (!quiet) go("#trace");
    const box = $("trace");
    box.dataset.receipt = receipt;
    box.dataset.state = "loading";
    try {
      const report = await (await api("/v1/trace?" + params)).json();
      if (!state.trace || state.trace.receipt !== receipt) return; // another receipt was picked meanwhile
      state.trace.report = report;
      renderTrace(report);
      box.dataset.state = "shown";
    } catch (error) {
      if (error instanceof Unauthorized) {
        unauthorized();
        return;
      }
      box.dataset.state = "error";
      $("trace-body").hidden = true;
      $("trace-hint").hidden = false;
      $("trace-hint").replaceChildren(
        ...(error.status === 404 ? bi("未找到小票 " + receipt, "Receipt not found") : bi("查询失败", "Lookup failed")),
        el("br"), el("span", { class: "en" }, error.message));
    }
    renderReceipts();
  }

  function renderTrace(report) {
    const sale = report.sale;
    const d = sale.data || {};
    $("trace-hint").hidden = true;
    $("trace-body").hidden = false;
    $("trace-receipt").textContent = report.receipt;
    const meta = [
      [bi("门店", "Store"), sale.store],
      [bi("收银台", "Station"), d.station],
      [bi("店员", "Clerk"), d.clerk],
      [bi("时间", "Time"), shortTime(sale.ts)],
      [bi("合计", "Total"), money(d.total, d.currency)],
      [bi("收银设备", "Register"), d.device],
    ];
    $("trace-meta").replaceChildren(...meta.map(([label, value]) =>
      el("div", {}, el("dt", {}, label), el("dd", {}, text(value)))));
    const others = report.matches.filter((m) => m.hq_seq !== sale.hq_seq);
    const othersBox = $("trace-others");
    othersBox.hidden = others.length === 0;
    othersBox.replaceChildren(
      ...bi("同号小票", "Other sales with this number"), ": ",
      ...others.map((m) => el("button", { type: "button", class: "link other-sale", "data-hq-seq": m.hq_seq, "data-store": m.store },
        m.store + " " + shortTime(m.ts))));
    $("trace-incomplete").hidden = report.complete;
    $("trace-lines").replaceChildren(...report.lines.map((entry, index) => traceLine(entry, index, d.currency)));
    const hasText = typeof d.text === "string" && d.text !== "";
    $("trace-text-box").hidden = !hasText;
    $("trace-text").textContent = hasText ? d.text : "";
    if (report.lines.length === 0) {
      $("trace-lines").append(el("li", { class: "empty" }, bi("该小票没有商品行", "This receipt has no item lines")));
    }
    renderTraceConsultation(report.consultation);
  }

  // The consultation behind the receipt: each step as done, skipped (why) or missing, and the
  // flow products' scans.
  function renderTraceConsultation(c) {
    const box = $("trace-consultation");
    box.hidden = !c;
    if (!c) {
      box.replaceChildren();
      return;
    }
    const r = c.record;
    box.dataset.consultation = c.id || "";
    const head = el("h3", {}, bi("问诊", "Consultation"), " ", el("span", { class: "mono" }, text(c.id)));
    if (!r) {
      box.replaceChildren(head, el("p", { class: "note" }, bi("问诊记录未到达总部", "The consultation record has not reached HQ (or is outside the search window)")));
      return;
    }
    const d = r.data || {};
    const outcome = FLOW_OUTCOMES[d.outcome] || [d.outcome, ""];
    const meta = [
      [bi("流程", "Flow"), text(d.flow)],
      [bi("结果", "Outcome"), el("span", { class: "chip " + d.outcome }, bi(outcome[0], outcome[1]))],
      [bi("店员", "Clerk"), text(d.clerk)],
      [bi("开始", "Opened"), shortTime(d.opened_at)],
      [bi("结束", "Closed"), shortTime(d.closed_at)],
      [bi("扫码扣留", "Held"), d.released_by ? text((RELEASED_BY[d.released_by] || [d.released_by])[0]) + " · " + seconds(d.held_ms) : "—"],
    ];
    const steps = (Array.isArray(d.steps) ? d.steps : []).map((step) => {
      const state = step.skipped ? "skipped" : step.at ? "done" : "missing";
      const label = STEP_STATES[state];
      const value = Array.isArray(step.values) ? step.values.join("、") : step.value;
      return el("li", { class: "consult-step " + state, "data-step": step.key, "data-state": state },
        el("span", { class: "step-label" }, text(step.label, step.key)),
        el("span", { class: "chip " + state }, bi(label[0], label[1])),
        el("span", { class: "step-value" }, state === "skipped" ? text(step.skipped) : text(value, "")),
        el("span", { class: "step-clerk" }, text(step.clerk, "")),
        el("span", { class: "step-time" }, step.at ? shortTime(step.at) : ""));
    });
    const scans = (c.scans || []).map((entry) => {
      const s = entry.scan;
      return el("li", { class: "consult-scan" + (s ? "" : " missing"), "data-id": entry.id },
        s ? [shortTime(s.ts), " · ", text(s.data && s.data.device), " · ", el("span", { class: "mono" }, text(s.data && s.data.code))]
          : [el("span", { class: "mono" }, entry.id), " ", bi("未找到", "Not found")]);
    });
    box.replaceChildren(head,
      el("dl", { class: "meta" }, meta.map(([label, value]) => el("div", {}, el("dt", {}, label), el("dd", {}, value)))),
      el("ol", { class: "consult-steps" }, steps),
      el("h4", {}, bi("流程商品扫码", "Flow product scans")),
      scans.length ? el("ul", { class: "consult-scans" }, scans) : el("p", { class: "empty" }, "—"));
  }

  function traceLine(entry, index, currency) {
    const line = entry.line || {};
    const item = el("li", { class: "trace-line", "data-line": index + 1, "data-sku": line.sku, "data-prompt": line.prompt },
      el("div", { class: "line-head" },
        el("span", { class: "line-no" }, "#" + (index + 1)),
        el("span", { class: "sku mono" }, text(line.sku)),
        el("span", { class: "name" }, text(line.name, "")),
        el("span", { class: "qty" }, "× " + text(line.qty)),
        el("span", { class: "amount" }, money(line.amount, currency))));
    if (!line.prompt) {
      item.append(el("p", { class: "no-link" }, bi("无推荐提问", "No prompt linked to this line")));
      return item;
    }
    const a = entry.attribution;
    const s = entry.scan;
    const step = (cls, title, rows) =>
      el("div", { class: "step " + cls },
        el("h5", {}, title),
        el("dl", {}, rows.map(([label, value, valueClass]) =>
          el("div", {}, el("dt", {}, label), el("dd", { class: valueClass || null }, value)))));
    const scanStep = s
      ? step("step-scan", bi("扫码", "Scan"), [
        [bi("时间", "Time"), shortTime(s.ts)],
        [bi("设备", "Device"), text(s.data && s.data.device), "scan-device"],
        [bi("收银台", "Station"), text(s.data && s.data.station)],
        [bi("条码", "Code"), text(s.data && s.data.code), "mono"],
        [bi("原始", "Raw"), text(s.data && s.data.raw), "mono raw"],
      ])
      : step("step-scan missing", bi("扫码", "Scan"), [[bi("未找到", "Not found"), a ? text(a.data.scan) : "—", "mono"]]);
    let promptStep;
    let answerStep;
    if (a) {
      const ad = a.data || {};
      promptStep = step("step-prompt", bi("提问", "Prompt"), [
        [bi("活动", "Campaign"), text(ad.campaign)],
        [bi("问题", "Question"), text(ad.question)],
        [bi("弹出", "Opened"), shortTime(ad.opened_at)],
        [bi("编号", "Prompt id"), text(ad.prompt), "mono"],
      ]);
      const answer = ad.outcome === "answered"
        ? el("span", { class: "answer" }, text(ad.answer_label, ad.answer), " ", el("span", { class: "en" }, text(ad.answer, "")))
        : outcomeChip(ad.outcome);
      answerStep = step("step-answer " + ad.outcome, bi("回答", "Answer"), [
        [bi("结果", "Outcome"), answer, "answer-cell"],
        [bi("店员", "Clerk"), text(ad.clerk), "clerk"],
        [bi("用时", "Latency"), seconds(ad.latency_ms)],
        [bi("完成于", "Resolved"), shortTime(ad.resolved_at)],
        [bi("渠道", "Channel"), text(ad.channel)],
      ].concat(ad.skip_reason ? [[bi("原因", "Reason"), ad.skip_reason]] : []));
    } else {
      promptStep = step("step-prompt missing", bi("提问", "Prompt"), [[bi("编号", "Prompt id"), line.prompt, "mono"]]);
      answerStep = step("step-answer missing", bi("回答", "Answer"), [[bi("状态", "State"), bi("记录未到达", "Not at HQ yet")]]);
    }
    item.append(el("div", { class: "chain" }, scanStep, el("span", { class: "arrow" }, "→"), promptStep,
      el("span", { class: "arrow" }, "→"), answerStep));
    return item;
  }

  // ---- views and navigation ----
  // The address's hash picks the view: #overview, #trace, #stores, #store/CODE, #regions,
  // #regions/ID, #alerts, #alerts/ID, #fleet, #editor. Tabs and links only change the hash, so the back button,
  // a reload and the link in a robot message all land on what they point at.
  const VIEWS = ["overview", "trace", "stores", "store", "regions", "alerts", "fleet", "editor"];

  function parseHash(hash) {
    const [head, ...rest] = hash.replace(/^#/, "").split("/");
    let arg = rest.join("/");
    try {
      arg = decodeURIComponent(arg);
    } catch (_) {
      // a malformed escape: take it as written
    }
    return { view: VIEWS.includes(head) ? head : "", arg };
  }

  // Where a user lands: a store's manager on their store's page, everyone else the overview.
  function landing() {
    const me = state.me;
    return me && me.role === "store" && me.store ? "#store/" + encodeURIComponent(me.store) : "#overview";
  }

  function go(hash) {
    if (window.location.hash === hash) route();
    else window.location.hash = hash;
  }

  function route() {
    let { view, arg } = parseHash(window.location.hash);
    if (!view || (state.me && !(manage.allowed(view) && fleet.allowed(view)))) {
      if (!state.me) view = "overview";
      else {
        const hash = landing();
        history.replaceState(null, "", window.location.pathname + window.location.search + hash);
        ({ view, arg } = parseHash(hash));
      }
    }
    showView(view);
    manage.show(view, arg);
    fleet.show(view);
    // Views drawn so far (tests wait on it; the hash itself may name what the page hides).
    document.body.dataset.routed = String(Number(document.body.dataset.routed || 0) + 1);
  }

  function showView(view) {
    document.body.dataset.view = view;
    for (const name of VIEWS) $("view-" + name).hidden = name !== view;
    // A store's page belongs under the stores tab, or is the store manager's own tab.
    const own = state.me && state.me.role === "store";
    const tabView = view === "store" && !own ? "stores" : view;
    for (const tab of document.querySelectorAll(".tab")) {
      tab.setAttribute("aria-selected", String(tab.dataset.view === tabView));
    }
  }

  // Tabs for the signed-in role only: a store's manager has no chain-wide stores or regions.
  function applyRole(me) {
    for (const tab of document.querySelectorAll(".tab[data-roles]")) {
      tab.hidden = !tab.dataset.roles.split(" ").includes(me.role);
    }
    document.body.dataset.role = me.role;
  }

  // ---- wiring ----
  function start() {
    for (const tab of document.querySelectorAll(".tab")) {
      tab.addEventListener("click", () => {
        const view = tab.dataset.view;
        go(view === "store" ? landing() : "#" + view);
      });
    }
    window.addEventListener("hashchange", route);
    $("store-filter").addEventListener("change", (event) => {
      state.store = event.target.value;
      if (state.stats) render();
    });
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token-input").value.trim();
      if (!token) return;
      auth.token = token;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("token-input").value = "";
      $("token-form").hidden = true;
      hideBanner();
      setStatus("starting", bi("连接中", "Connecting…"));
      connect();
    });
    $("receipt-search").addEventListener("submit", (event) => {
      event.preventDefault();
      const receipt = $("receipt-input").value.trim();
      if (receipt) loadTrace(receipt, state.store, null);
    });
    // Receipt buttons in the list, the feed and the other-sales line.
    document.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-receipt], button.other-sale");
      if (!button) return;
      if (button.classList.contains("other-sale")) {
        const receipt = state.trace && state.trace.receipt;
        if (receipt) loadTrace(receipt, button.dataset.store, Number(button.dataset.hqSeq));
        return;
      }
      const hqSeq = button.dataset.hqSeq ? Number(button.dataset.hqSeq) : null;
      loadTrace(button.dataset.receipt, button.dataset.store, hqSeq);
    });
    $("logout").addEventListener("click", async () => {
      try {
        await fetch("/v1/logout", { method: "POST", credentials: "same-origin" });
      } finally {
        window.location.assign("/login");
      }
    });
    manage.init({ go, unauthorized });
    fleet.init({ go, unauthorized });
    route();
    auth.token = takeToken();
    connect();
  }

  // Asks HQ who we are (a token, else the session cookie), then starts polling.
  async function connect() {
    let me;
    try {
      me = await (await api("/v1/me")).json();
    } catch (error) {
      if (!(error instanceof Unauthorized)) {
        setStatus("error", [...bi("连接中断", "Connection lost"), " · " + error.message]);
        setTimeout(connect, POLL_MS);
        return;
      }
      if (auth.token) {
        askForToken(bi("管理令牌无效或缺失 (401)", "The admin token is missing or was refused — enter it below"));
        return;
      }
      // A link to a view (the robot message's /#alerts/ID) signs in first, then comes back.
      if (parseHash(window.location.hash).view) {
        window.location.replace(loginUrl());
        return;
      }
      askForToken(bi("请登录，或输入管理令牌", "Sign in at /login, or enter an admin token"));
      setStatus("unauthorized", bi("未连接", "Not connected"));
      return;
    }
    state.me = me;
    state.session = !auth.token;
    if (state.session) {
      $("user-name").textContent = me.name + " · " + me.role;
      $("session").hidden = false;
    }
    applyRole(me);
    manage.setMe(me);
    fleet.setMe(me);
    route();
    restart();
  }

  start();
})();
