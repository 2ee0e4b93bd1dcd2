/* posgw clerk page: shows a station's open attribution prompts live and answers them.
 *
 * No dependencies, no build step. Live data comes from EventSource('/api/v1/events?station=S'):
 * `reset` (drop everything shown; a snapshot follows), `prompt`, `resolved`, `stats`, `ping`.
 *
 * Stable hooks (for browser tests; keep them when changing the page):
 *   body[data-connection=online|offline]   connection state
 *   #offline                                offline banner, [hidden] while connected
 *   #prompt-active[data-id=ID]              the active (oldest) prompt, [hidden] when none
 *   #prompt-active .option[data-key=KEY]    its option buttons, text "1 医生推荐"
 *   #active-sku, #active-question           its product code and question
 *   #countdown[data-seconds=N]              its seconds left
 *   #queue .prompt[data-id=ID]              the other open prompts, oldest first
 *   .prompt[data-id=ID]                     any prompt on screen (active or queued)
 *   #idle                                   shown when nothing is open
 *   #skip                                   opens the skip dialog (keys S and 0 too)
 *   #skip-dialog, #skip-reasons .reason[data-reason=TEXT] (a tap skips at once),
 *   #skip-text, #skip-confirm (Enter), #skip-cancel (Escape)
 *   #completeness[data-answered][data-opened]   "67%" or "—"
 *   #clerk                                  clerk id, kept in localStorage "posgw.clerk"
 *   #toast[data-kind=ok|error]              last confirmation or error
 * Keys: 1–9 answer the active prompt, S or 0 skip, Enter confirms, Escape cancels.
 */
(function () {
  'use strict';

  var config = JSON.parse(document.getElementById('config').textContent);
  var station = config.station;
  var prompts = [];   // open prompts, oldest first (the server's order)
  var pending = {};   // id -> true while our answer/skip is in flight (removed optimistically)
  var closed = {};    // id -> true once the server said it is resolved
  var skew = 0;       // server clock minus this browser's clock, ms
  var lockedUntil = 0; // after an answer, ignore input briefly: a double tap must not answer the next prompt
  var skipping = null; // the prompt the skip dialog is for
  var lastSeen = Date.now();
  var source = null;

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function find(id) {
    for (var i = 0; i < prompts.length; i++) if (prompts[i].id === id) return i;
    return -1;
  }
  function remove(id) {
    var i = find(id);
    if (i >= 0) prompts.splice(i, 1);
  }

  /* ---- rendering ---- */

  function render() {
    var active = prompts[0];
    var box = $('prompt-active');
    $('idle').hidden = !!active;
    if (!active) {
      box.hidden = true;
      box.removeAttribute('data-id');
    } else if (box.dataset.id !== active.id || box.hidden) {
      box.hidden = false;
      box.dataset.id = active.id;
      $('active-sku').textContent = active.sku;
      $('active-question').textContent = active.question;
      $('countdown').dataset.expires = active.expires_at;
      var options = $('options');
      options.textContent = '';
      active.options.forEach(function (option, i) {
        var button = el('button', 'option');
        button.type = 'button';
        button.dataset.key = option.key;
        if (i < 9) button.appendChild(el('kbd', '', String(i + 1)));
        button.appendChild(document.createTextNode((i < 9 ? ' ' : '') + option.label));
        button.addEventListener('click', function () { answer(active, option); });
        options.appendChild(button);
      });
      box.classList.remove('fresh');
      void box.offsetWidth; // restart the highlight animation
      box.classList.add('fresh');
    }
    var queue = $('queue');
    queue.textContent = '';
    prompts.slice(1).forEach(function (prompt) {
      var item = el('li', 'prompt');
      item.dataset.id = prompt.id;
      item.appendChild(el('span', 'sku', prompt.sku));
      item.appendChild(el('span', 'question', prompt.question));
      var countdown = el('span', 'countdown');
      countdown.dataset.expires = prompt.expires_at;
      item.appendChild(countdown);
      queue.appendChild(item);
    });
    $('queue-title').hidden = prompts.length < 2;
    if (skipping && find(skipping.id) < 0) closeSkip();
    tick();
  }

  function tick() {
    var now = Date.now() + skew;
    var counters = document.querySelectorAll('.countdown[data-expires]');
    for (var i = 0; i < counters.length; i++) {
      var node = counters[i];
      var left = Math.max(0, Math.ceil((Date.parse(node.dataset.expires) - now) / 1000));
      node.dataset.seconds = String(left);
      node.textContent = Math.floor(left / 60) + ':' + ('0' + (left % 60)).slice(-2);
      node.classList.toggle('urgent', left <= 15);
    }
  }

  function showStats(today) {
    var node = $('completeness');
    node.dataset.answered = String(today.answered);
    node.dataset.opened = String(today.opened);
    node.textContent = today.opened ? Math.round((100 * today.answered) / today.opened) + '%' : '—';
    $('completeness-detail').textContent = today.answered + ' / ' + today.opened;
  }

  var toastTimer = null;
  function toast(kind, text) {
    var node = $('toast');
    node.dataset.kind = kind;
    node.textContent = text;
    node.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () { node.hidden = true; }, kind === 'ok' ? 1500 : 3500);
  }

  function setOnline(online) {
    document.body.dataset.connection = online ? 'online' : 'offline';
    $('offline').hidden = online;
  }

  /* ---- answering ---- */

  function clerk() { return $('clerk').value.trim() || null; }

  function post(prompt, action, body) {
    pending[prompt.id] = true;
    remove(prompt.id);
    render();
    lockedUntil = Date.now() + 400;
    return fetch('/api/v1/prompts/' + encodeURIComponent(prompt.id) + '/' + action, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body)
    }).then(function (response) {
      if (response.ok) return;
      return response.json().catch(function () { return {}; }).then(function (reply) {
        throw { status: response.status, message: reply.error || response.statusText };
      });
    }).then(function () {
      delete pending[prompt.id];
    }, function (problem) {
      delete pending[prompt.id];
      var status = problem && problem.status;
      if (status === 409) {
        toast('error', '已被处理 Already resolved');
      } else if (status === 404) {
        toast('error', '提示不存在 Unknown prompt');
      } else {
        // Not recorded (offline, 503, 422): show the prompt again unless it closed meanwhile.
        if (!closed[prompt.id] && find(prompt.id) < 0) {
          prompts.push(prompt);
          prompts.sort(function (a, b) { return Date.parse(a.opened_at) - Date.parse(b.opened_at); });
          render();
        }
        toast('error', '未记录，请重试 Not recorded, try again' +
          (problem && problem.message ? ' (' + problem.message + ')' : ''));
      }
    });
  }

  function answer(prompt, option) {
    if (Date.now() < lockedUntil || pending[prompt.id]) return;
    toast('ok', '已记录 Recorded · ' + option.label);
    post(prompt, 'answer', { option: option.key, clerk: clerk() });
  }

  function openSkip() {
    if (!prompts[0] || Date.now() < lockedUntil) return;
    skipping = prompts[0];
    $('skip-text').value = '';
    $('skip-dialog').hidden = false;
    $('skip-text').focus();
  }

  function closeSkip() {
    skipping = null;
    $('skip-dialog').hidden = true;
    if (document.activeElement) document.activeElement.blur();
  }

  function confirmSkip(reason) {
    if (!skipping) return;
    reason = (reason === undefined ? $('skip-text').value : reason).trim();
    if (!reason) {
      toast('error', '请填写原因 Please give a reason');
      $('skip-text').focus();
      return;
    }
    var prompt = skipping;
    closeSkip();
    toast('ok', '已跳过 Skipped · ' + reason);
    post(prompt, 'skip', { reason: reason, clerk: clerk() });
  }

  /* ---- live updates ---- */

  function connect() {
    if (source) source.close();
    source = new EventSource('/api/v1/events?station=' + encodeURIComponent(station));
    source.addEventListener('open', function () { lastSeen = Date.now(); setOnline(true); });
    source.addEventListener('error', function () {
      setOnline(false);
      // CONNECTING: the browser retries by itself; CLOSED (e.g. an HTTP error): we retry.
      if (source.readyState === EventSource.CLOSED) setTimeout(connect, 2000);
    });
    source.addEventListener('reset', function (event) {
      lastSeen = Date.now();
      var data = JSON.parse(event.data);
      skew = Date.parse(data.now) - Date.now() || 0;
      prompts = [];
      closed = {};
      setOnline(true);
      render();
    });
    source.addEventListener('prompt', function (event) {
      lastSeen = Date.now();
      var prompt = JSON.parse(event.data);
      if (prompt.station !== station || pending[prompt.id] || closed[prompt.id]) return;
      if (find(prompt.id) < 0) prompts.push(prompt);
      render();
    });
    source.addEventListener('resolved', function (event) {
      lastSeen = Date.now();
      var data = JSON.parse(event.data);
      closed[data.id] = true;
      remove(data.id);
      render();
    });
    source.addEventListener('stats', function (event) {
      lastSeen = Date.now();
      var today = JSON.parse(event.data);
      if (today.station === station) showStats(today);
    });
    source.addEventListener('ping', function () { lastSeen = Date.now(); });
  }

  /* ---- input ---- */

  document.addEventListener('keydown', function (event) {
    if (event.ctrlKey || event.altKey || event.metaKey) return;
    if (!$('skip-dialog').hidden) {
      if (event.key === 'Escape') { event.preventDefault(); closeSkip(); }
      else if (event.key === 'Enter') { event.preventDefault(); confirmSkip(); }
      return;
    }
    if (event.target === $('clerk')) {
      if (event.key === 'Enter' || event.key === 'Escape') $('clerk').blur();
      return;
    }
    if (event.repeat || !prompts[0]) return;
    if (/^[1-9]$/.test(event.key)) {
      var option = prompts[0].options[Number(event.key) - 1];
      if (option) { event.preventDefault(); answer(prompts[0], option); }
    } else if (event.key === 's' || event.key === 'S' || event.key === '0') {
      event.preventDefault();
      openSkip();
    }
  });

  $('skip').addEventListener('click', openSkip);
  $('skip-cancel').addEventListener('click', closeSkip);
  $('skip-confirm').addEventListener('click', function () { confirmSkip(); });
  $('skip-dialog').addEventListener('click', function (event) {
    if (event.target === $('skip-dialog')) closeSkip(); // a tap outside the box cancels
  });
  (config.skip_reasons || []).forEach(function (reason) {
    var button = el('button', 'reason', reason);
    button.type = 'button';
    button.dataset.reason = reason;
    button.addEventListener('click', function () { confirmSkip(reason); });
    $('skip-reasons').appendChild(button);
  });

  var clerkInput = $('clerk');
  try { clerkInput.value = localStorage.getItem('posgw.clerk') || ''; } catch (e) { /* storage off */ }
  clerkInput.addEventListener('input', function () {
    try { localStorage.setItem('posgw.clerk', clerkInput.value.trim()); } catch (e) { /* storage off */ }
  });

  document.body.dataset.station = station;
  setOnline(false);
  render();
  connect();
  setInterval(function () {
    tick();
    // The server sends a ping every 15 s; silence means a dead connection EventSource missed.
    if (Date.now() - lastSeen > 40000) { lastSeen = Date.now(); setOnline(false); connect(); }
  }, 250);
})();
