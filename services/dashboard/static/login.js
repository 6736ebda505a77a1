"use strict";
// Sign-in page: posts the gateway key or admin token once, then the server
// keeps only a signed session cookie (never the key itself).

async function signIn(body) {
  const error = document.getElementById("login-error");
  error.hidden = true;
  const response = await fetch("/dashboard/api/v1/session", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    credentials: "same-origin",
  });
  if (response.ok) {
    window.location.assign("/dashboard/");
    return;
  }
  let message = "Sign-in failed (HTTP " + response.status + ")";
  try {
    const data = await response.json();
    message = data.error.message;
  } catch (ignored) { /* keep the status message */ }
  error.textContent = message;
  error.hidden = false;
}

document.getElementById("user-form").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn({ gateway_key: document.getElementById("gateway-key").value });
});
document.getElementById("operator-form").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn({ admin_token: document.getElementById("admin-token").value });
});
