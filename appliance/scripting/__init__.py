"""The scripts process (``[program:scripts]``): runs user JavaScript in V8 isolates,
reached by the worker over JSON-RPC on its own Unix socket."""
