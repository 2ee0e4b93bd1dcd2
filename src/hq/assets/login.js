// The HQ login page: posts the name and password to /v1/login; the answer sets the session
// cookie (HttpOnly, so this script never sees it) and the page goes to the dashboard, on the
// view its hash named (/login#alerts/ID comes back to /#alerts/ID: a robot message's link).
"use strict";
(function () {
  const form = document.getElementById("login-form");
  const problem = document.getElementById("login-error");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    problem.hidden = true;
    const name = document.getElementById("login-name").value.trim();
    const password = document.getElementById("login-password").value;
    let response;
    try {
      response = await fetch("/v1/login", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ name, password }),
        credentials: "same-origin",
      });
    } catch (error) {
      problem.textContent = "无法连接 HQ · Cannot reach HQ";
      problem.hidden = false;
      return;
    }
    if (response.ok) {
      // Only a fragment is carried over: the target stays this receiver's dashboard.
      const hash = window.location.hash;
      window.location.assign("/" + (hash.length > 1 ? hash : ""));
      return;
    }
    let message = "用户名或密码错误 · Wrong name or password";
    if (response.status === 429) {
      const wait = response.headers.get("Retry-After") || "60";
      message = "失败次数过多，请 " + wait + " 秒后再试 · Too many failed logins; try again in " + wait + " s";
    }
    problem.textContent = message;
    problem.hidden = false;
    document.getElementById("login-password").value = "";
  });
})();
