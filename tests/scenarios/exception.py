def parse(text):
    return int(text)


def check(text):
    try:
        return parse(text)
    except ValueError:
        return -1


def fail():
    raise KeyError("missing")


if __name__ == "__main__":
    check("x")
    try:
        fail()
    except KeyError:
        pass
