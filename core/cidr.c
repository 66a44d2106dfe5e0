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

static const uint8_t cidr_v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* Reads `sa` as 16 bytes of IPv6 address and a port, an IPv4 address in its IPv4-mapped form
 * (::ffff:a.b.c.d): both spellings of an IPv4 address are then one point, for ranges and for
 * equality alike. False for other families. */
static bool cidr_addr16(const struct sockaddr *sa, uint8_t out[16], uint16_t *port)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const void *)sa;
        memcpy(out, cidr_v4_mapped, sizeof cidr_v4_mapped);
        memcpy(out + 12, &in->sin_addr, 4);
        *port = in->sin_port;
        return true;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const void *)sa;
        memcpy(out, &in6->sin6_addr, 16);
        *port = in6->sin6_port;
        return true;
    }
    return false;
}

bool gw_cidr_match(const gw_cidr_t *c, const struct sockaddr *sa)
{
    uint8_t addr[16], net[16];
    uint16_t port;
    if (!cidr_addr16(sa, addr, &port))
        return false;
    if (c->family == AF_INET6)
        return cidr_bits_match(c->addr, addr, c->prefix);
    memcpy(net, cidr_v4_mapped, sizeof cidr_v4_mapped);
    memcpy(net + 12, c->addr, 4);
    return cidr_bits_match(net, addr, 96u + c->prefix);
}

bool gw_sockaddr_equal(const struct sockaddr_storage *a, socklen_t alen,
                       const struct sockaddr_storage *b, socklen_t blen)
{
    uint8_t x[16], y[16];
    uint16_t xport, yport;
    if (cidr_addr16((const struct sockaddr *)a, x, &xport) &&
        cidr_addr16((const struct sockaddr *)b, y, &yport))
        return xport == yport && memcmp(x, y, sizeof x) == 0;
    return a->ss_family == b->ss_family && alen == blen && memcmp(a, b, alen) == 0;
}
