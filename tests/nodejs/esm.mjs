// An ES module runtime: loaded with import().
export function handler(cfg) {
  return (req) => `esm ${cfg}: ${req.toString()}`;
}
