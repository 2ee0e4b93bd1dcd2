// posgw HQ dashboard: a consultation flow's step completeness as tables, from a FLOW of
// /v1/stats. The overview shows them over all stores (or the store picked), the store page for
// its store, by clerk.
import { el, bi, text, percent } from "./common.js";

export const GOAL = 0.85;

export function rateCell(ratio, count) {
  const fill = el("span", { class: "fill" });
  fill.style.setProperty("width", Math.min(100, ratio * 100) + "%");
  const ok = count > 0 && ratio >= GOAL;
  return el("td", { class: "rate " + (ok ? "ok" : "below") },
    el("div", { class: "rate-cell" },
      el("span", { class: "mini meter" }, fill),
      el("span", { class: "rate-value" }, count > 0 ? percent(ratio) : "—")));
}

export function reasonChips(reasons) {
  const entries = Object.entries(reasons || {}).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  if (entries.length === 0) return "—";
  return entries.map(([reason, count]) =>
    el("span", { class: "chip reason", "data-reason": reason, "data-count": count }, reason + " ×" + count));
}

// Each step of the flow: done, skipped, missing, completeness, skip reasons.
export function stepsTable(steps) {
  const table = el("table", { class: "steps-table" },
    el("thead", {}, el("tr", {},
      el("th", {}, bi("步骤", "Step")),
      el("th", { class: "num" }, bi("已完成", "Done")),
      el("th", { class: "num" }, bi("跳过", "Skipped")),
      el("th", { class: "num" }, bi("缺失", "Missing")),
      el("th", { class: "rate" }, bi("完整率", "Completeness")),
      el("th", {}, bi("跳过原因", "Skip reasons")))));
  const body = el("tbody");
  for (const step of steps) {
    body.append(el("tr", { "data-step": step.key, "data-completeness": Math.round((step.completeness || 0) * 1000) / 10 },
      el("td", { class: "name" }, text(step.label, step.key), " ", el("span", { class: "en" }, step.key)),
      el("td", { class: "num done" }, step.done),
      el("td", { class: "num skipped" }, step.skipped),
      el("td", { class: "num missing" }, step.missing),
      rateCell(step.completeness || 0, step.consultations),
      el("td", { class: "reasons" }, reasonChips(step.skip_reasons))));
  }
  table.append(body);
  return table;
}

// Step completeness of `steps` per row: `rows` is [[name, FLOW figures]], `by` "store" or
// "clerk".
export function stepMatrix(steps, rows, by) {
  const byClerk = by === "clerk";
  const box = el("div", { class: "matrix-box" },
    el("h4", {}, byClerk ? bi("各店员步骤完整率", "Step completeness by clerk") : bi("各门店步骤完整率", "Step completeness by store")));
  const table = el("table", { class: "step-matrix", "data-by": by },
    el("thead", {}, el("tr", {},
      el("th", {}, byClerk ? bi("店员", "Clerk") : bi("门店", "Store")),
      el("th", { class: "num" }, bi("问诊", "Consultations")),
      ...steps.map((step) => el("th", { class: "num", "data-step": step.key }, text(step.label, step.key), el("span", { class: "en" }, step.key))),
      el("th", { class: "num" }, bi("合计", "All steps")))));
  const body = el("tbody");
  for (const [name, f] of rows) {
    const byKey = {};
    for (const step of f.steps || []) byKey[step.key] = step;
    const cells = steps.map((step) => {
      const mine = byKey[step.key];
      if (!mine || mine.consultations === 0) return el("td", { class: "num cell none", "data-step": step.key }, "—");
      const low = mine.completeness < GOAL;
      const reasons = Object.entries(mine.skip_reasons || {}).map(([r, n]) => r + " ×" + n).join(", ");
      return el("td", {
        class: "num cell " + (low ? "below" : "ok"),
        "data-step": step.key,
        title: mine.done + " 完成 done · " + mine.skipped + " 跳过 skipped · " + mine.missing + " 缺失 missing" + (reasons ? " · " + reasons : ""),
      },
        el("strong", { class: "cell-rate" }, percent(mine.completeness)),
        el("span", { class: "cell-counts" }, mine.skipped + " 跳 · " + mine.missing + " 缺"));
    });
    body.append(el("tr", { "data-row": name },
      el("td", { class: "name" }, name),
      el("td", { class: "num" }, f.consultations),
      ...cells,
      el("td", { class: "num total" }, percent(f.completeness || 0))));
  }
  if (rows.length === 0) {
    body.append(el("tr", {}, el("td", { colspan: steps.length + 3, class: "empty" },
      bi("没有记录店员的问诊", "No consultation names a clerk"))));
  }
  table.append(body);
  box.append(table);
  return box;
}
