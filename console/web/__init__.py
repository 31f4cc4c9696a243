"""The console in a browser (`swordsec-console serve`): textual-serve runs one `attach` per browser session,
behind a token check (guard), with each session's process tied to its WebSocket and to the server (sessions)."""
