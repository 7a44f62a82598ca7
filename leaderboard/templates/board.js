(function () {
  // Tabs.
  const tabs = document.querySelectorAll('.tabs button');
  tabs.forEach(function (b) {
    b.addEventListener('click', function () {
      tabs.forEach(function (o) {
        o.setAttribute('aria-selected', o === b ? 'true' : 'false');
        document.getElementById(o.getAttribute('aria-controls')).hidden = (o !== b);
      });
    });
  });
  // Sortable columns: numbers numerically, text alphabetically; a second click reverses.
  document.querySelectorAll('table.board').forEach(function (table) {
    const heads = table.querySelectorAll('thead th');
    heads.forEach(function (th, col) {
      th.addEventListener('click', function () {
        const asc = th.getAttribute('aria-sort') !== 'ascending';
        heads.forEach(function (h) { h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
        const num = th.dataset.type === 'num';
        const body = table.tBodies[0];
        const rows = Array.from(body.rows);
        rows.sort(function (a, b) {
          const x = a.cells[col].dataset.sort || '', y = b.cells[col].dataset.sort || '';
          const d = num ? (parseFloat(x) - parseFloat(y)) : x.localeCompare(y);
          return asc ? d : -d;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  // Filters by track and by what the method learnt from (both apply).
  document.querySelectorAll('.track-filter, .training-filter').forEach(function (sel) {
    sel.addEventListener('change', function () {
      const panel = sel.closest('.tabpanel');
      const track = panel.querySelector('.track-filter').value;
      const training = panel.querySelector('.training-filter').value;
      panel.querySelectorAll('table.board tbody tr').forEach(function (tr) {
        tr.hidden = (!!track && tr.dataset.track !== track) ||
                    (!!training && tr.dataset.training !== training);
      });
    });
  });
})();
