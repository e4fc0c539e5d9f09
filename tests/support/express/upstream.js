// An Express 4 upstream as teams write them: routes matched the Express way (case-insensitive,
// decoded). Answers who it thinks is calling and which route matched.
// Usage: node upstream.js PORT
const express = require('express');

const app = express();
app.get('/api/admin/users', (req, res) => {
  res.json({ route: '/api/admin/users', url: req.originalUrl, user: req.get('x-user-id') || null });
});
app.get('/api/x', (req, res) => {
  res.json({ route: '/api/x', url: req.originalUrl, user: req.get('x-user-id') || null });
});
app.use((req, res) => res.status(404).json({ route: null, url: req.originalUrl }));
const server = app.listen(Number(process.argv[2]), '127.0.0.1', () => console.log('listening'));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
