"""Balanced reduction trees, the shape every wide sum, maximum and selection of the datapath takes."""


def tree(items, combine, levels: int | None = None):
    """``items`` reduced pairwise by ``combine(left, right)``, level by level (an odd last item passes
    through a level), over at most ``levels`` levels (all of them when ``None``). Returns the list left:
    one item after a full reduction."""
    items = list(items)
    while len(items) > 1 and (levels is None or levels > 0):
        items = [combine(items[i], items[i + 1]) if i + 1 < len(items) else items[i] for i in range(0, len(items), 2)]
        levels = None if levels is None else levels - 1
    return items


def tree_levels(count: int) -> int:
    """Levels of a full :func:`tree` over ``count`` items."""
    return (count - 1).bit_length()


def tree_sum(terms):
    """The sum of ``terms`` by a balanced tree of additions."""
    return tree(terms, lambda a, b: a + b)[0]
