-- POST /auth/refresh, each request with the newest refresh token of a session that no other
-- request has in flight: tokens come from the file in $REFRESH_TOKENS (one per session, more
-- sessions than connections) and each answer's rotated token goes back to the end of the
-- queue. Run with one wrk thread (-t1): the queue is the thread's.
local tokens = {}

init = function(args)
  for line in io.lines(os.getenv("REFRESH_TOKENS")) do
    table.insert(tokens, line)
  end
end

request = function()
  local token = table.remove(tokens, 1) or "queue-empty"
  return wrk.format("POST", "/auth/refresh", { ["Content-Type"] = "application/json" },
    '{"refresh_token":"' .. token .. '"}')
end

response = function(status, headers, body)
  local token = body:match('"refresh_token":"([^"]+)"')
  if token then
    table.insert(tokens, token)
  end
end
