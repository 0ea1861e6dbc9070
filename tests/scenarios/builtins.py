import time


def work(items):
    total = len(items)
    items.append(total)
    return sorted(items, key=abs)


if __name__ == "__main__":
    work([3, -1, 2])
    time.sleep(0)
