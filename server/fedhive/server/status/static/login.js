"use strict";
document.getElementById("login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const reply = await fetch("/login", {
    method: "POST", body: document.getElementById("token").value, credentials: "same-origin",
  });
  if (reply.ok) { window.location.reload(); return; }
  document.getElementById("error").textContent = "wrong token";
});
