/* posgw clerk page: shows a station's open attribution prompts and consultations live and
 * answers them.
 *
 * No dependencies, no build step. Live data comes from EventSource('/api/v1/events?station=S'):
 * `reset` (drop everything shown; a snapshot follows), `prompt`, `resolved`, `stats`,
 * `consultation` (update or insert by id; `state` other than "open": show the outcome briefly,
 * then drop it), `ping`. The flows 新问诊 offers come with the page (#config `flows`).
 *
 * Stable hooks (for browser tests; keep them when changing the page):
 *   body[data-connection=online|offline]   connection state
 *   body[data-keys=prompt|steps|chips|none] what the number keys do now
 *   #offline                                offline banner, [hidden] while connected
 *   #prompt-active[data-id=ID]              the active (oldest) prompt, [hidden] when none
 *   #prompt-active .option[data-key=KEY]    its option buttons, text "1 医生推荐"
 *   #active-sku, #active-question           its product code and question
 *   #countdown[data-seconds=N]              its seconds left
 *   #queue .prompt[data-id=ID]              the other open prompts, oldest first
 *   .prompt[data-id=ID]                     any prompt on screen (active or queued)
 *   #idle                                   shown when no prompt is open
 *   #skip                                   opens the skip dialog (keys S and 0 too)
 *   #skip-dialog, #skip-reasons .reason[data-reason=TEXT] (a tap skips at once),
 *   #skip-text, #skip-confirm (Enter), #skip-cancel (Escape)
 *   #completeness[data-answered][data-opened]   "67%" or "—"
 *   #clerk                                  clerk id, kept in localStorage "posgw.clerk"
 *   #toast[data-kind=ok|error]              last confirmation or error (API errors plainly;
 *                                           新问诊's refusal is in #consult-new-error instead)
 * Consultations:
 *   #consult-new                            opens the 新问诊 dialog (key N)
 *   #consult-new-dialog, #consult-flows .flow[data-flow=ID][aria-checked=true|false],
 *   #consult-member (member card, typed or wedge-scanned; sent as `customer`, never stored),
 *   #consult-open (Enter), #consult-new-cancel (Escape), #consult-new-error (the refusal)
 *   #consultations                          the checklist column, [hidden] when none
 *   .consultation[data-id=ID][data-flow=FLOW][data-state=open|completed|incomplete|abandoned]
 *     [data-active=true] (the one keys act on) [data-settled=true|false] [data-held=true]
 *   .consultation .held-countdown[data-seconds=N]   while a scan is held
 *   .consultation .restart-warning          a held scan never reached the POS: scan again
 *   .consultation .outcome                  how it closed (shown briefly)
 *   .step[data-key=KEY][data-index=N][data-kind=do|choose|multi]
 *     [data-state=open|done|skipped][data-selected=true]
 *     [data-pending=true] [data-value=V] [data-values=JSON array] [data-skipped=REASON]
 *   .step .do                               the step's button: does a step without choices,
 *                                           selects one with choices
 *   .step .chip[data-value=V][aria-pressed] its choices; .step .confirm records a multi step
 *   .step .skip-step                        asks for a skip reason
 *   #consult-skip-dialog, #consult-skip-reasons .reason[data-reason=TEXT] (listed reasons
 *     only, no free text), #consult-skip-cancel (Escape)
 *   .consultation .close-completed[.ready]  one tap once every step is settled (.ready); else
 *                                           a first tap arms it ([data-armed]) and a second
 *                                           closes it as incomplete
 *   .consultation .close-abandoned          a first tap arms it ([data-armed]), a second abandons
 * Keys (not typing in a field):
 *   a prompt on screen: 1–9 answer it, S or 0 skip (its dialog: Enter confirms, Escape cancels);
 *   otherwise, for the active consultation: 1–9 do step N (one without choices) or select it
 *   (one with choices); a selected step's choices are then 1–9, Enter confirms several,
 *   Escape unselects; S or 0 skips the selected (else the first open) step; Enter completes
 *   the consultation once every step is settled. Keys are ignored 400 ms after a prompt's
 *   answer, so a double press cannot also do a step. N opens 新问诊 at any time.
 *   新问诊 dialog: 1–9 pick a flow when there are several (not while in the card field),
 *   Enter starts, Escape cancels. Skip-reason dialog: 1–9 pick a reason, Escape cancels.
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
    document.body.classList.toggle('prompt-open', !!active);
    renderConsults(); // the checklist shows its keys only while no prompt takes them
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

  /* ---- consultations (处方推荐五步法) ---- */

  var flows = config.flows || [];
  var consultations = []; // this station's open ones (and just-closed ones, briefly), oldest first
  var consultClosed = {}; // id -> true once it closed: late events for it are ignored
  var activeId = null;    // the one keys act on (a tap on a card picks it); default the newest
  var selected = null;    // {id, key}: the step with choices whose choices the number keys pick
  var picks = {};         // 'id/key' -> values tapped on a multi step, not yet confirmed
  var stepBusy = {};      // 'id/key' -> true while its request is in flight
  var armed = {};         // 'id/outcome' -> time until which a second tap confirms the close
  var restartAt = {};     // id -> its scan count when "scan again" showed; -1 once dismissed
  var skippingStep = null; // {id, key}: the step the consultation skip dialog is for
  var newFlow = null;     // the flow picked in the 新问诊 dialog
  var opening = false;    // a 新问诊 request is in flight
  var OUTCOME_MS = 3000;  // how long a closed consultation stays on screen
  var ARM_MS = 3000;      // how long a first tap on a close button waits for the second
  var OUTCOMES = {
    completed: ['已完成', 'Completed'],
    incomplete: ['未完成结束', 'Closed incomplete'],
    abandoned: ['已放弃', 'Abandoned']
  };

  function findConsult(id) {
    for (var i = 0; i < consultations.length; i++) if (consultations[i].id === id) return i;
    return -1;
  }
  function stepOf(c, key) {
    for (var i = 0; i < c.steps.length; i++) if (c.steps[i].key === key) return c.steps[i];
    return null;
  }
  function stepState(step) { return step.skipped != null ? 'skipped' : step.at ? 'done' : 'open'; }
  function settled(c) { return c.steps.every(function (step) { return !!step.at; }); }
  /* The newest step time: a view older than the one shown (a late event) is not applied. */
  function stamp(c) {
    return c.steps.reduce(function (latest, step) {
      return step.at ? Math.max(latest, Date.parse(step.at) || 0) : latest;
    }, 0);
  }
  /* The store's local time as the server wrote it ("…T10:31:05.123+08:00" -> "10:31"). */
  function clock(timestamp, seconds) { return String(timestamp || '').slice(11, seconds ? 19 : 16); }
  function kbd(text) { return el('kbd', '', text); }
  function bilingual(node, zh, en) {
    node.appendChild(document.createTextNode(zh + ' '));
    node.appendChild(el('span', 'en', en));
    return node;
  }

  function activeConsult() {
    var newest = null;
    for (var i = 0; i < consultations.length; i++) {
      var c = consultations[i];
      if (c.state !== 'open') continue;
      if (c.id === activeId) return c;
      newest = c;
    }
    return newest;
  }

  /* Which step S (or 0) skips: the selected one if still open, else the first open one. */
  function currentStep(c) {
    if (selected && selected.id === c.id) {
      var chosen = stepOf(c, selected.key);
      if (chosen && !chosen.at) return chosen;
    }
    for (var i = 0; i < c.steps.length; i++) if (!c.steps[i].at) return c.steps[i];
    return null;
  }

  /* Applies a consultation view; whether it drew anything. */
  function upsert(view) {
    if (!view || view.station !== station) return false;
    var i = findConsult(view.id);
    if (view.state !== 'open') {
      consultClosed[view.id] = true;
      if (selected && selected.id === view.id) selected = null;
      if (i < 0) return false; // never shown here: nothing to say
      if (consultations[i].state !== 'open') return false;
      consultations[i] = view;
      setTimeout(function () {
        var j = findConsult(view.id);
        if (j >= 0 && consultations[j].state !== 'open') {
          consultations.splice(j, 1);
          renderConsults();
        }
      }, OUTCOME_MS);
    } else if (i >= 0) {
      if (consultations[i].state !== 'open' || stamp(view) < stamp(consultations[i])) return false;
      // The answer to our request and its event carry the same view: draw it once.
      if (JSON.stringify(view) === JSON.stringify(consultations[i])) return false;
      consultations[i] = view;
    } else {
      if (consultClosed[view.id]) return false;
      consultations.push(view);
      consultations.sort(function (a, b) { return Date.parse(a.opened_at) - Date.parse(b.opened_at); });
      // A consultation that just opened here (by 新问诊 or a scan) is the customer at the counter.
      if (consultations[consultations.length - 1] === view) activeId = view.id;
    }
    renderConsults();
    return true;
  }

  function renderConsults() {
    var aside = $('consultations');
    var active = activeConsult();
    activeId = active ? active.id : null;
    if (selected && (!active || selected.id !== active.id || !stepOf(active, selected.key))) selected = null;
    aside.textContent = '';
    consultations.forEach(function (c) { aside.appendChild(card(c, c === active)); });
    aside.hidden = consultations.length === 0;
    document.body.classList.toggle('has-consult', consultations.length > 0);
    if (skippingStep) {
      var skipFor = consultations[findConsult(skippingStep.id)];
      if (!skipFor || skipFor.state !== 'open') closeConsultSkip();
    }
    renderKeys();
    tick();
  }

  function card(c, active) {
    var box = el('section', 'consultation');
    box.dataset.id = c.id;
    box.dataset.state = c.state;
    box.dataset.flow = c.flow;
    box.dataset.settled = String(settled(c));
    if (active) box.dataset.active = 'true';
    box.setAttribute('aria-label', c.flow_name);
    var head = el('header', 'consult-head');
    head.appendChild(el('h2', '', c.flow_name));
    head.appendChild(bilingual(el('span', 'opened'), '开始 ' + clock(c.opened_at), 'opened'));
    if (c.customer) head.appendChild(bilingual(el('span', 'customer'), '会员 ✓', 'member'));
    if (c.receipt) head.appendChild(bilingual(el('span', 'receipt'), '小票 ' + c.receipt, 'receipt'));
    box.appendChild(head);
    if (c.state !== 'open') {
      var words = OUTCOMES[c.state] || [c.state, ''];
      var outcome = bilingual(el('div', 'outcome'), words[0], words[1]);
      outcome.setAttribute('role', 'status');
      box.appendChild(outcome);
      return box;
    }
    box.addEventListener('click', function () {
      if (activeId !== c.id) { activeId = c.id; renderConsults(); }
    });
    if (c.held) {
      box.dataset.held = 'true';
      var held = el('div', 'held');
      held.setAttribute('role', 'status');
      held.appendChild(bilingual(el('span', 'text'), '商品扫码已暂缓：完成前面的步骤后才送收银机',
        'Scan held from the POS until the steps above are done'));
      var countdown = el('span', 'countdown held-countdown');
      countdown.dataset.expires = c.held.until;
      countdown.title = '最迟放行 Released at the latest';
      held.appendChild(countdown);
      box.appendChild(held);
    } else if (c.released_by === 'restart') {
      if (restartAt[c.id] === undefined) restartAt[c.id] = c.scans.length;
      if (c.scans.length <= restartAt[c.id]) {
        var warning = el('div', 'restart-warning');
        warning.setAttribute('role', 'alert');
        bilingual(warning, '网关重启，暂缓的商品扫码未送到收银机：请重新扫码',
          'The held scan never reached the POS: scan the product again');
        var ok = el('button', 'secondary', '知道了 OK');
        ok.type = 'button';
        ok.addEventListener('click', function () { restartAt[c.id] = -1; renderConsults(); });
        warning.appendChild(ok);
        box.appendChild(warning);
      }
    } else if (c.released_by === 'timeout') {
      box.appendChild(bilingual(el('div', 'note'), '暂缓超时，扫码已送收银机', 'Held scan went on after the time limit'));
    }
    var list = el('ol', 'steps');
    c.steps.forEach(function (step, i) { list.appendChild(stepRow(c, step, i, active)); });
    box.appendChild(list);
    box.appendChild(closeButtons(c, active));
    return box;
  }

  function stepStatus(step) {
    if (step.skipped != null) return '跳过 Skipped · ' + step.skipped;
    if (step.at) {
      var parts = ['✓ ' + clock(step.at, true)];
      if (step.values) parts.push(step.values.join('、'));
      else if (step.value) parts.push(step.value);
      if (step.clerk) parts.push(step.clerk);
      return parts.join(' · ');
    }
    if (step.auto === 'scan') return '扫码自动 auto: scan';
    if (step.auto === 'sale') return '收款自动 auto: sale';
    return '';
  }

  function stepRow(c, step, i, active) {
    var keys = active && !prompts[0]; // whether its key hints are shown
    var id = c.id + '/' + step.key;
    var state = stepState(step);
    var isSelected = !!(active && selected && selected.id === c.id && selected.key === step.key);
    var numbered = keys && !isSelected && i < 9 && !(selected && selected.id === c.id);
    var row = el('li', 'step');
    row.dataset.key = step.key;
    row.dataset.index = String(i + 1);
    row.dataset.state = state;
    row.dataset.kind = !step.choose.length ? 'do' : step.multi ? 'multi' : 'choose';
    if (isSelected) row.dataset.selected = 'true';
    if (stepBusy[id]) row.dataset.pending = 'true';
    if (step.value != null) row.dataset.value = step.value;
    if (step.values) row.dataset.values = JSON.stringify(step.values);
    if (step.skipped != null) row.dataset.skipped = step.skipped;

    var main = el('button', 'do');
    main.type = 'button';
    main.appendChild(numbered ? kbd(String(i + 1)) : el('span', 'num', String(i + 1)));
    var mark = el('span', 'mark', state === 'done' ? '✓' : state === 'skipped' ? '—' : '');
    mark.setAttribute('aria-hidden', 'true');
    main.appendChild(mark);
    var words = el('span', 'text');
    words.appendChild(el('span', 'label', step.label));
    words.appendChild(el('span', 'status', stepStatus(step)));
    main.appendChild(words);
    if (step.hold) main.title = '此步之前的步骤完成后，扫码才送收银机 The scan waits for the steps before this one';
    if (step.choose.length) {
      main.setAttribute('aria-expanded', String(isSelected));
      main.addEventListener('click', function () { select(c, step); });
    } else {
      main.disabled = state !== 'open';
      main.addEventListener('click', function () { doStep(c, step); });
    }
    row.appendChild(main);

    if (step.choose.length) {
      var chips = el('div', 'chips');
      chips.setAttribute('role', 'group');
      chips.setAttribute('aria-label', step.label);
      var chosen = picks[id] || step.values || (step.value != null ? [step.value] : []);
      step.choose.forEach(function (value, j) {
        var chip = el('button', 'chip');
        chip.type = 'button';
        chip.dataset.value = value;
        chip.setAttribute('aria-pressed', String(chosen.indexOf(value) >= 0));
        if (keys && isSelected && j < 9) { chip.appendChild(kbd(String(j + 1))); chip.appendChild(document.createTextNode(' ')); }
        chip.appendChild(document.createTextNode(value));
        chip.addEventListener('click', function () { pick(c, step, value); });
        chips.appendChild(chip);
      });
      if (step.multi && (state === 'open' || picks[id])) {
        var confirm = bilingual(el('button', 'confirm'), '确认', 'OK');
        confirm.type = 'button';
        if (keys && isSelected) confirm.appendChild(kbd('Enter'));
        confirm.disabled = !(picks[id] && picks[id].length);
        confirm.addEventListener('click', function () { confirmMulti(c, step); });
        chips.appendChild(confirm);
      }
      row.appendChild(chips);
    }
    if (state === 'open' && c.skip_reasons.length) {
      var skip = el('button', 'skip-step');
      skip.type = 'button';
      var current = currentStep(c);
      if (keys && current && current.key === step.key) { skip.appendChild(kbd('S')); skip.appendChild(document.createTextNode(' ')); }
      bilingual(skip, '跳过', 'Skip');
      skip.addEventListener('click', function () { openConsultSkip(c, step); });
      row.appendChild(skip);
    }
    return row;
  }

  function closeButtons(c, active) {
    var actions = el('div', 'consult-actions');
    var all = settled(c);
    var finish = el('button', 'close-completed');
    finish.type = 'button';
    var abandon = el('button', 'close-abandoned secondary');
    abandon.type = 'button';
    var now = Date.now();
    if (all) {
      finish.classList.add('ready');
      if (active && !prompts[0]) { finish.appendChild(kbd('Enter')); finish.appendChild(document.createTextNode(' ')); }
      bilingual(finish, '完成问诊', 'Complete');
    } else if (armed[c.id + '/completed'] > now) {
      finish.dataset.armed = 'true';
      bilingual(finish, '再按一次：未完成结束', 'Tap again to close incomplete');
    } else {
      bilingual(finish, '提前结束', 'End now (incomplete)');
    }
    if (armed[c.id + '/abandoned'] > now) {
      abandon.dataset.armed = 'true';
      bilingual(abandon, '再按一次确认放弃', 'Tap again to abandon');
    } else {
      bilingual(abandon, '放弃', 'Abandon');
    }
    finish.addEventListener('click', function () {
      if (all || armed[c.id + '/completed'] > Date.now()) closeConsult(c, 'completed');
      else arm(c.id + '/completed');
    });
    abandon.addEventListener('click', function () {
      if (armed[c.id + '/abandoned'] > Date.now()) closeConsult(c, 'abandoned');
      else arm(c.id + '/abandoned');
    });
    actions.appendChild(finish);
    actions.appendChild(abandon);
    return actions;
  }

  function arm(key) {
    armed[key] = Date.now() + ARM_MS;
    renderConsults();
    setTimeout(function () {
      if (armed[key] && armed[key] <= Date.now()) { delete armed[key]; renderConsults(); }
    }, ARM_MS + 50);
  }

  /* ---- consultation requests ---- */

  function request(path, body) {
    return fetch(path, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body)
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (reply) {
        if (response.ok) return reply;
        throw { status: response.status, message: reply.error || response.statusText };
      });
    }, function () {
      throw { status: 0, message: '' };
    });
  }

  /* What went wrong, for the clerk: a plain Chinese sentence, then the server's own words. */
  function problemText(what, problem) {
    var status = problem && problem.status;
    var message = (problem && problem.message) || '';
    var plain;
    if (!status) plain = '网关连不上 Gateway unreachable';
    else if (status === 409) plain = '问诊已结束 Already closed';
    else if (status === 404) plain = '问诊或步骤不存在 Unknown consultation or step';
    else if (status === 422 && /customer/.test(message)) plain = '本店未开启会员识别，请清空卡号 Member cards are not enabled here: clear the card number';
    else if (status === 422) plain = '不被接受 Refused';
    else if (status === 503) plain = '暂时无法记录，请重试 Not recorded, try again';
    else plain = '出错 Error ' + status;
    return what + '：' + plain + (message ? ' (' + status + ': ' + message + ')' : '');
  }

  function consultFailed(c, what, problem) {
    var status = problem && problem.status;
    if ((status === 404 && /no consultation/.test(problem.message || '')) || status === 409) {
      var i = findConsult(c.id);
      if (i >= 0 && consultations[i].state === 'open') consultations.splice(i, 1);
      consultClosed[c.id] = true;
    }
    toast('error', problemText(what, problem));
    renderConsults();
  }

  function send(c, step, body) {
    var id = c.id + '/' + step.key;
    if (stepBusy[id]) return;
    stepBusy[id] = true;
    body.clerk = clerk();
    renderConsults();
    request('/api/v1/consultations/' + encodeURIComponent(c.id) + '/steps/' + encodeURIComponent(step.key), body)
      .then(function (view) {
        delete stepBusy[id];
        delete picks[id];
        if (selected && selected.id === c.id && selected.key === step.key) selected = null;
        var said = body.skip ? '已跳过 Skipped · ' + step.label + ' · ' + body.skip
          : '已记录 Recorded · ' + step.label + (body.value ? ' · ' + body.value : body.values ? ' · ' + body.values.join('、') : '');
        toast('ok', said);
        if (!upsert(view)) renderConsults(); // the step is no longer pending
      }, function (problem) {
        delete stepBusy[id];
        consultFailed(c, '「' + step.label + '」未记录 Not recorded', problem);
      });
  }

  function doStep(c, step) {
    activeId = c.id;
    if (step.at) { toast('ok', '已完成 Already done · ' + step.label); return; }
    send(c, step, {});
  }

  function select(c, step) {
    activeId = c.id;
    selected = { id: c.id, key: step.key };
    renderConsults();
  }

  function pick(c, step, value) {
    activeId = c.id;
    if (!step.multi) { send(c, step, { value: value }); return; }
    var id = c.id + '/' + step.key;
    var values = (picks[id] || step.values || []).slice();
    var at = values.indexOf(value);
    if (at >= 0) values.splice(at, 1); else values.push(value);
    picks[id] = values;
    selected = { id: c.id, key: step.key };
    renderConsults();
  }

  function confirmMulti(c, step) {
    var values = picks[c.id + '/' + step.key];
    if (!values || !values.length) {
      toast('error', '请至少选一项 Pick at least one · ' + step.label);
      return;
    }
    send(c, step, { values: values });
  }

  function closeConsult(c, outcome) {
    delete armed[c.id + '/' + outcome];
    request('/api/v1/consultations/' + encodeURIComponent(c.id) + '/close', { outcome: outcome })
      .then(function (view) {
        var words = OUTCOMES[view.state] || [view.state, ''];
        toast('ok', words[0] + ' ' + words[1] + ' · ' + view.flow_name);
        upsert(view);
      }, function (problem) {
        consultFailed(c, '问诊未结束 Not closed', problem);
      });
  }

  /* ---- 新问诊 ---- */

  function openNew() {
    if (!flows.length) { toast('error', '未配置问诊流程 No consultation flow is configured'); return; }
    newFlow = flows.length === 1 ? flows[0].id : null;
    renderFlows();
    $('consult-member').value = '';
    $('consult-new-error').hidden = true;
    $('consult-open').disabled = false;
    $('consult-new-dialog').hidden = false;
    if (newFlow) $('consult-member').focus();
    else if (document.activeElement) document.activeElement.blur();
  }

  function renderFlows() {
    var box = $('consult-flows');
    box.textContent = '';
    flows.forEach(function (flow, i) {
      var button = el('button', 'reason flow');
      button.type = 'button';
      button.dataset.flow = flow.id;
      button.setAttribute('role', 'radio');
      button.setAttribute('aria-checked', String(flow.id === newFlow));
      if (flows.length > 1 && i < 9) { button.appendChild(kbd(String(i + 1))); button.appendChild(document.createTextNode(' ')); }
      button.appendChild(document.createTextNode(flow.name));
      button.addEventListener('click', function () { pickFlow(flow.id); });
      box.appendChild(button);
    });
  }

  function pickFlow(id) {
    newFlow = id;
    renderFlows();
    $('consult-member').focus();
  }

  function closeNew() {
    $('consult-new-dialog').hidden = true;
    $('consult-member').value = ''; // the member id is never kept by the page
    newFlow = null;
    if (document.activeElement) document.activeElement.blur();
  }

  function submitNew() {
    if (opening) return;
    var error = $('consult-new-error');
    if (!newFlow) {
      error.textContent = '请先选择流程 Pick a flow first';
      error.hidden = false;
      return;
    }
    var member = $('consult-member').value.trim();
    var body = { station: station, flow: newFlow, clerk: clerk() };
    if (member) body.customer = member;
    opening = true;
    $('consult-open').disabled = true;
    request('/api/v1/consultations', body).then(function (view) {
      opening = false;
      closeNew();
      activeId = view.id;
      selected = null;
      toast('ok', '已开始 Started · ' + view.flow_name);
      upsert(view);
    }, function (problem) {
      opening = false;
      $('consult-open').disabled = false;
      var text = problemText('无法开始问诊 Not started', problem);
      error.textContent = text; // in the dialog, where the clerk is looking (no toast over it)
      error.hidden = false;
      $('consult-member').select(); // a rescan or retyped number replaces it
    });
  }

  function newDialogKey(event) {
    if (event.key === 'Escape') { event.preventDefault(); closeNew(); return; }
    if (event.key === 'Enter') { event.preventDefault(); submitNew(); return; }
    // Digits pick a flow unless they are typed (or wedge-scanned) into the member field.
    if (event.target !== $('consult-member') && flows.length > 1 && /^[1-9]$/.test(event.key)) {
      var flow = flows[Number(event.key) - 1];
      if (flow) { event.preventDefault(); pickFlow(flow.id); }
    }
  }

  /* ---- skipping a step: a listed reason only ---- */

  function openConsultSkip(c, step) {
    activeId = c.id;
    if (!c.skip_reasons.length) { toast('error', '此流程的步骤不能跳过 This flow allows no skips'); return; }
    skippingStep = { id: c.id, key: step.key };
    $('consult-skip-step').textContent = step.label;
    var box = $('consult-skip-reasons');
    box.textContent = '';
    c.skip_reasons.forEach(function (reason, i) {
      var button = el('button', 'reason');
      button.type = 'button';
      button.dataset.reason = reason;
      if (i < 9) { button.appendChild(kbd(String(i + 1))); button.appendChild(document.createTextNode(' ')); }
      button.appendChild(document.createTextNode(reason));
      button.addEventListener('click', function () { skipWith(reason); });
      box.appendChild(button);
    });
    $('consult-skip-dialog').hidden = false;
    box.firstChild.focus();
  }

  function closeConsultSkip() {
    skippingStep = null;
    $('consult-skip-dialog').hidden = true;
    if (document.activeElement) document.activeElement.blur();
  }

  function skipWith(reason) {
    var target = skippingStep;
    closeConsultSkip();
    if (!target) return;
    var i = findConsult(target.id);
    var c = i >= 0 ? consultations[i] : null;
    var step = c && c.state === 'open' ? stepOf(c, target.key) : null;
    if (!step) return;
    // Settled meanwhile (by the scan, the sale or another screen): a skip must not overwrite it.
    if (step.at) { toast('error', '此步骤已完成，未跳过 Already settled, not skipped · ' + step.label); return; }
    send(c, step, { skip: reason });
  }

  function consultSkipKey(event) {
    if (event.key === 'Escape') { event.preventDefault(); closeConsultSkip(); return; }
    if (!/^[1-9]$/.test(event.key) || !skippingStep) return;
    var c = consultations[findConsult(skippingStep.id)];
    var reason = c && c.skip_reasons[Number(event.key) - 1];
    if (reason) { event.preventDefault(); skipWith(reason); }
  }

  /* ---- consultation keys ---- */

  function consultKey(key) {
    var c = activeConsult();
    if (!c) return false;
    // Just after a prompt's answer: a double press must not also do a step.
    if (Date.now() < lockedUntil) return true;
    var chosen = selected && selected.id === c.id ? stepOf(c, selected.key) : null;
    if (/^[1-9]$/.test(key)) {
      var n = Number(key) - 1;
      if (chosen) {
        if (chosen.choose[n] !== undefined) pick(c, chosen, chosen.choose[n]);
        return true;
      }
      var step = c.steps[n];
      if (!step) return false;
      if (step.choose.length) select(c, step);
      else doStep(c, step);
      return true;
    }
    if (key === 's' || key === 'S' || key === '0') {
      var current = currentStep(c);
      if (current) openConsultSkip(c, current);
      return true;
    }
    if (key === 'Escape' && chosen) {
      delete picks[c.id + '/' + chosen.key];
      selected = null;
      renderConsults();
      return true;
    }
    if (key === 'Enter') {
      if (chosen && chosen.multi) confirmMulti(c, chosen);
      else if (!chosen && settled(c)) closeConsult(c, 'completed');
      else if (!chosen) toast('error', '还有步骤未完成 Steps still open');
      return true;
    }
    return false;
  }

  /* The key help under the page: what the keys do right now. */
  function renderKeys() {
    var footer = $('keys');
    var c = activeConsult();
    var mode = prompts[0] ? 'prompt' : !c ? 'none' : selected && selected.id === c.id ? 'chips' : 'steps';
    document.body.dataset.keys = mode;
    footer.hidden = !c;
    if (!c) return;
    footer.textContent = '';
    footer.appendChild(bilingual(el('span', 'title'), '按键', 'Keys'));
    function item(keys, zh, en) {
      var span = el('span', 'item');
      keys.forEach(function (k, i) {
        if (i) span.appendChild(document.createTextNode('–'));
        span.appendChild(kbd(k));
      });
      span.appendChild(document.createTextNode(' '));
      footer.appendChild(bilingual(span, zh, en));
    }
    if (mode === 'prompt') {
      footer.appendChild(bilingual(el('span', 'item'), '数字键先回答推荐来源提示，问诊请点按',
        'Number keys answer the prompt; tap the checklist'));
    } else if (mode === 'chips') {
      var step = stepOf(c, selected.key);
      item(['1', String(Math.min(9, step.choose.length))], '选「' + step.label + '」', 'choose');
      if (step.multi) item(['Enter'], '确认', 'confirm');
      item(['S'], '跳过', 'skip');
      item(['Esc'], '返回', 'back');
    } else {
      item(['1', String(Math.min(9, c.steps.length))], '完成或选择步骤', 'do or select a step');
      item(['S'], '跳过当前步骤', 'skip the current step');
      if (settled(c)) item(['Enter'], '完成问诊', 'complete');
    }
    item(['N'], '新问诊', 'new consultation');
  }

  $('consult-new').hidden = !flows.length;
  $('consult-new').addEventListener('click', openNew);
  $('consult-new-form').addEventListener('submit', function (event) { event.preventDefault(); submitNew(); });
  $('consult-new-cancel').addEventListener('click', closeNew);
  $('consult-new-dialog').addEventListener('click', function (event) {
    if (event.target === $('consult-new-dialog')) closeNew();
  });
  $('consult-skip-cancel').addEventListener('click', closeConsultSkip);
  $('consult-skip-dialog').addEventListener('click', function (event) {
    if (event.target === $('consult-skip-dialog')) closeConsultSkip();
  });

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
      consultations = [];
      consultClosed = {};
      setOnline(true);
      render();
      renderConsults();
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
    source.addEventListener('consultation', function (event) {
      lastSeen = Date.now();
      upsert(JSON.parse(event.data));
    });
    source.addEventListener('ping', function () { lastSeen = Date.now(); });
  }

  /* ---- input ---- */

  document.addEventListener('keydown', function (event) {
    if (event.ctrlKey || event.altKey || event.metaKey) return;
    if (!$('consult-new-dialog').hidden) { newDialogKey(event); return; }
    if (!$('consult-skip-dialog').hidden) { consultSkipKey(event); return; }
    if (!$('skip-dialog').hidden) {
      if (event.key === 'Escape') { event.preventDefault(); closeSkip(); }
      else if (event.key === 'Enter') { event.preventDefault(); confirmSkip(); }
      return;
    }
    if (event.target === $('clerk')) {
      if (event.key === 'Enter' || event.key === 'Escape') $('clerk').blur();
      return;
    }
    if (event.repeat || /^(INPUT|TEXTAREA|SELECT)$/.test(event.target.tagName || '')) return;
    // A focused button (reached with Tab) takes Enter and Space itself.
    if (event.target.tagName === 'BUTTON' && (event.key === 'Enter' || event.key === ' ')) return;
    if (event.key === 'n' || event.key === 'N') { event.preventDefault(); openNew(); return; }
    if (prompts[0]) {
      if (/^[1-9]$/.test(event.key)) {
        var option = prompts[0].options[Number(event.key) - 1];
        if (option) { event.preventDefault(); answer(prompts[0], option); }
      } else if (event.key === 's' || event.key === 'S' || event.key === '0') {
        event.preventDefault();
        openSkip();
      }
      return;
    }
    if (consultKey(event.key)) event.preventDefault();
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
