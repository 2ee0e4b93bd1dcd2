// The pairing page: sends the token as JSON; on success the gateway has set the pairing cookie
// and the station list opens.
'use strict';
document.getElementById('pair-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const error = document.getElementById('pair-error');
  error.textContent = '';
  const token = document.getElementById('pair-token').value.trim();
  try {
    const response = await fetch('/api/v1/pair', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ token }),
    });
    if (response.ok) {
      window.location.assign('/');
      return;
    }
    const body = await response.json().catch(() => ({}));
    error.textContent = body.error || ('HTTP ' + response.status);
  } catch (problem) {
    error.textContent = String(problem);
  }
});
