// Handler style: `escape(cfg)` returns the function that answers each
// request; escape-html comes from the npm registry (package.json), found
// through NODE_PATH.
const escapeHtml = require('escape-html');

exports.escape = (cfg) => (req) => (cfg || '') + escapeHtml(req.toString());

// An async handler: many calls wait at once on Node's one thread.
exports.slow = (cfg) => async (req) => {
  await new Promise((resolve) => setTimeout(resolve, Number(cfg) || 100));
  return 'waited: ' + req.toString();
};
