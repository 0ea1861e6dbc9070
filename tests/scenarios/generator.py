def countdown(n):
    while n > 0:
        yield n
        n -= 1


def outer():
    def inner(values):
        return [v * 2 for v in values]
    return inner(countdown(2))


if __name__ == "__main__":
    outer()
