"""Every `refmeta read` page in a real browser: headless Chromium (Debian's package, which .ci/run
installs) opens each page at a wide and a narrow window, checks that nothing spills out of its
box, that every anchor and link resolves inside the page and that nothing is fetched from
elsewhere, and takes a screenshot.  Without Chromium the test is skipped, saying so; under CI
(CI=true) it fails instead, since CI installs it."""

import os

import pytest

from headless import Browser, find_chromium
from refmeta import read

WINDOWS = ((1400, 900), (820, 900))          # side by side, and stacked (below 900 px)

CHECKS = r"""(() => {
  const problems = [], seen = new Set(), root = document.documentElement;
  const name = el => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
                     (el.className && typeof el.className === 'string' ? '.' + el.className.split(' ').join('.') : '');
  for (const el of document.querySelectorAll('[id]')) {
    if (seen.has(el.id)) problems.push('duplicate id ' + el.id);
    seen.add(el.id);
  }
  const anchors = document.querySelectorAll('a[href]');
  for (const a of anchors) {
    const href = a.getAttribute('href');
    if (!href.startsWith('#')) problems.push('a link leaves the page: ' + href);
    else if (!document.getElementById(decodeURIComponent(href.slice(1)))) problems.push('no target for ' + href);
  }
  for (const el of document.querySelectorAll('link, script, img, iframe, object, embed'))
    problems.push('the page loads ' + name(el));
  if (root.scrollWidth > root.clientWidth) problems.push('the page scrolls sideways: ' + root.scrollWidth + ' > ' + root.clientWidth);
  let scrolled = 0;
  for (const el of document.querySelectorAll('body *')) {
    const style = getComputedStyle(el);
    if (style.display === 'inline' || el.clientWidth === 0) continue;
    if (['auto', 'scroll'].includes(style.overflowX)) { scrolled += el.scrollWidth > el.clientWidth; continue; }
    if (el.scrollWidth > el.clientWidth + 1) problems.push(name(el) + ' overflows: ' + el.scrollWidth + ' > ' + el.clientWidth);
    const box = el.getBoundingClientRect();
    if (box.right > root.clientWidth + 1) problems.push(name(el) + ' ends past the window: ' + box.right);
  }
  return {problems, anchors: anchors.length, cards: document.querySelectorAll('.card').length,
          scrolled, height: root.scrollHeight};
})()"""


@pytest.fixture(scope="module")
def chromium():
    executable = find_chromium()
    if executable is None:
        message = "Chromium not found on PATH (Debian: apt-get install chromium; .ci/run installs it)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    with Browser(executable) as browser:
        yield browser


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pages")
    return {name: read.write(name, str(folder)) for name in read.PAGES}


@pytest.mark.parametrize("name", list(read.PAGES))
def test_every_page_lays_out_within_the_window_and_every_link_resolves(chromium, pages, name, tmp_path):
    module = read.source.read(read.source.module_path(read.PAGES[name]))
    for width, height in WINDOWS:
        chromium.open("file://" + pages[name], width, height)
        found = chromium.evaluate(CHECKS)
        assert found["problems"] == [], f"{name} at {width} px: {found['problems'][:10]}"
        assert found["cards"] == len({id(e) for e in module.equations.values()})   # one card each
        assert found["anchors"] > len(module.equations)
        shot = tmp_path / f"{name}-{width}.png"
        chromium.screenshot(str(shot))
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000     # a picture with something on it


def test_the_layout_check_fails_on_a_page_that_overflows_and_on_a_dead_link(chromium, tmp_path):
    """The check above can fail: a fixed-width block wider than its column, and a link to an
    anchor that is not there."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><body><div style="width:300px">'
                    '<p style="width:900px;white-space:nowrap">wide</p></div>'
                    '<a href="#nowhere">dead</a></body></html>', encoding="utf-8")
    chromium.open("file://" + str(page), 1400, 900)
    problems = chromium.evaluate(CHECKS)["problems"]
    assert any("div overflows" in p for p in problems), problems
    assert "no target for #nowhere" in problems
