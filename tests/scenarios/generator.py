def countdown(n):
    while n > 0:
        yield n
        n -= 1


def outer():
    def inner(values):
        doubled = []
        for v in values:
            doubled.append(v * 2)
        return doubled
    return inner(countdown(2))


if __name__ == "__main__":
    outer()
