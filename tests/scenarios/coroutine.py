class Tick:
    def __await__(self):
        yield "tick"


async def leaf(n):
    await Tick()
    return n * 2


async def main():
    total = 0
    for i in range(2):
        total += await leaf(i)
    return total


def run(coro):
    try:
        while True:
            coro.send(None)
    except StopIteration as stop:
        return stop.value


if __name__ == "__main__":
    run(main())
