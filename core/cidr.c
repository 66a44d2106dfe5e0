/*
 * cidr: see cidr.h.
 */
#include "cidr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

bool gw_cidr_parse(const char *text, gw_cidr_t *out)
{
    char buf[64];
    size_t len = strlen(text);
    if (len == 0 || len >= sizeof buf)
        return false;
    memcpy(buf, text, len + 1);
    char *slash = strchr(buf, '/');
    long prefix = -1;
    if (slash) {
        *slash = '\0';
        const char *p = slash + 1;
        if (*p < '0' || *p > '9' || strlen(p) > 3)
            return false;
        char *end;
        prefix = strtol(p, &end, 10);
        if (*end != '\0')
            return false;
    }
    memset(out, 0, sizeof *out);
    int bits;
    if (inet_pton(AF_INET, buf, out->addr) == 1) {
        out->family = AF_INET;
        bits = 32;
    } else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
        out->family = AF_INET6;
        bits = 128;
    } else {
        return false;
    }
    if (prefix < 0)
        prefix = bits;
    if (prefix > bits)
        return false;
    out->prefix = (uint8_t)prefix;
    for (int i = (int)prefix; i < bits; i++)
        if (out->addr[i / 8] & (0x80 >> (i % 8)))
            return false;
    return true;
}

static bool cidr_bits_match(const uint8_t *net, const uint8_t *addr, unsigned prefix)
{
    unsigned whole = prefix / 8, rest = prefix % 8;
    if (memcmp(net, addr, whole) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (net[whole] & mask) == (addr[whole] & mask);
}

bool gw_cidr_match(const gw_cidr_t *c, const struct sockaddr *sa)
{
    const uint8_t *addr;
    int family = sa->sa_family;
    if (family == AF_INET) {
        addr = (const uint8_t *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr;
    } else if (family == AF_INET6) {
        addr = (const uint8_t *)&((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(addr, mapped, sizeof mapped) == 0) {
            family = AF_INET;
            addr += 12;
        }
    } else {
        return false;
    }
    return family == c->family && cidr_bits_match(c->addr, addr, c->prefix);
}

bool gw_sockaddr_equal(const struct sockaddr_storage *a, socklen_t alen,
                       const struct sockaddr_storage *b, socklen_t blen)
{
    if (a->ss_family != b->ss_family || alen != blen)
        return false;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
    }
    return memcmp(a, b, alen) == 0;
}
